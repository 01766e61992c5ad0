"""python -m spellm_exp.bench_distill: heads-only distillation throughput and memory vs the teacher.

For each teacher, over the same batches and in one process: a plain teacher forward
(`model(ids).logits`, no grad) against one heads-only distillation step (backbone pass, chunked
teacher marginals, heads, backward, AdamW step), interleaved, after warm-up, the device
synchronised around each timed step. On a GPU both run under bf16 autocast (as trainer=gpu
does) and the rows carry model FLOPs utilisation. Peak memory is the rise over the resting level
during each kind of step (CPU: the process's peak RSS; CUDA: the allocator's peak), for several k.
Rows of earlier runs on other devices or precisions stay in results/distill_throughput.{md,csv},
each with its own git SHA and date, so CPU and GPU figures sit side by side.
"""

from __future__ import annotations

import logging
import statistics
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from spellm_exp.bench import nonembedding_params, resolve_device
from spellm_exp.charset import build_alphabet
from spellm_exp.config import CONFIG_PATH
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.data.datamodule import pack_blocks
from spellm_exp.lit_module import DistillModule, LossConfig, TrainConfig
from spellm_exp.measure import device_clock, peak_rise_mb
from spellm_exp.model import SpeLLM
from spellm_exp.models import ModelConfig, load_teacher
from spellm_exp.provenance import device_name, provenance
from spellm_exp.results import write_table

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "32-true", "bf16-mixed")
# dense bf16 tensor-core peaks from NVIDIA's datasheets, matched in this order against the device name
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested} is unknown; use one of {PRECISIONS}.")
    if requested == "auto":
        return "bf16-mixed" if device.type == "cuda" else "32-true"
    return requested


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for this precision, where known (bf16 on NVIDIA data-centre GPUs)."""
    if device.type != "cuda" or precision != "bf16-mixed":
        return None
    name = device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def step_flops_per_token(model: torch.nn.Module, context: int, k: int, sigma: int) -> dict[str, float]:
    """Model FLOPs per token (multiply-adds x 2) of a teacher forward and of a heads-only distillation step:
    the backbone's matmuls (2 x its non-embedding parameters), causal attention over `context` tokens
    (scores and values: 2 x layers x heads x head_dim x context), the teacher's logits (2 d |V|); the step adds
    the heads' forward and their weight gradient (4 d k |Sigma|; no gradient flows into the frozen backbone)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * context
    teacher = 2 * nonembedding_params(model) + attention + 2 * config.hidden_size * config.vocab_size
    return {"teacher": teacher, "distill": teacher + 4 * config.hidden_size * k * sigma}


def bench_model(name: str, cfg: DictConfig, device: torch.device, precision: str) -> list[dict]:
    teacher = load_teacher(ModelConfig(name=name, init=cfg.init, cache_dir=cfg.paths.cache_dir))
    model = teacher.model.to(device)
    blocks = pack_blocks(teacher.tokenizer, corpus_texts(["boolq"], cfg.corpus_chars), cfg.block_size)
    needed = (cfg.warmup + cfg.repeats) * cfg.batch_size
    if len(blocks) < needed:
        raise ValueError(f"corpus_chars={cfg.corpus_chars} gives {len(blocks)} blocks of {cfg.block_size} tokens; "
                         f"{needed} are needed: raise corpus_chars.")
    batches = [blocks[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device)
               for i in range(cfg.warmup + cfg.repeats)]
    clock, peak = device_clock(device), peak_flops(device, precision)

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def teacher_forward(ids):
        with torch.no_grad(), autocast():
            model(input_ids=ids).logits

    rows = []
    for k in cfg.ks:
        spellm = SpeLLM.build(teacher, build_alphabet(cfg.charset, 0), k)  # bytes or ascii: no corpus to count
        module = DistillModule(spellm, TrainConfig(), LossConfig(chunk_elements=cfg.chunk_elements)).to(device)
        module.train()
        optimizer = torch.optim.AdamW(spellm.heads.parameters(), lr=1e-3)

        def distill_step(ids):
            with autocast():
                parts = module.loss_parts(ids)[0]
            parts.total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = {"teacher": [], "distill": []}
        for index, ids in enumerate(batches):  # interleaved, so both see the same machine state
            for kind, fn in (("teacher", teacher_forward), ("distill", distill_step)):
                start = clock()
                fn(ids)
                if index >= cfg.warmup:
                    times[kind].append(clock() - start)
        tokens = batches[0].numel()
        speed = {kind: tokens / statistics.median(times[kind]) for kind in times}
        flops = step_flops_per_token(model, cfg.block_size, k, spellm.alphabet.size)
        rows.append({
            "model": name, "origin": teacher.info.origin, "device": device_name(device), "precision": precision,
            "vocab": teacher.info.vocab_size, "k": k, "sigma": spellm.alphabet.size, "batch_tokens": tokens,
            "teacher_tokens_per_s": speed["teacher"], "distill_tokens_per_s": speed["distill"],
            "throughput_ratio": speed["distill"] / speed["teacher"],
            "teacher_mfu": speed["teacher"] * flops["teacher"] / peak if peak else None,
            "distill_mfu": speed["distill"] * flops["distill"] / peak if peak else None,
            "teacher_peak_rise_mb": peak_rise_mb(lambda: teacher_forward(batches[0]), device),
            "distill_peak_rise_mb": peak_rise_mb(lambda: distill_step(batches[0]), device),
        })
        log.info("%s k=%d: %s", name, k, rows[-1])
    return rows


def merge_with_other_devices(previous_csv: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """This run's rows plus the earlier runs' rows for other (device, precision) pairs."""
    if not previous_csv.exists():
        return rows
    previous = pd.read_csv(previous_csv)
    if not {"device", "precision"} <= set(previous.columns):  # written before rows named their device
        return rows
    ours = set(zip(rows.device, rows.precision))
    kept = previous[[pair not in ours for pair in zip(previous.device, previous.precision)]]
    return pd.concat([kept, rows], ignore_index=True)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench_distill")
def main(cfg: DictConfig) -> None:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(0)
    started = provenance(OmegaConf.to_container(cfg, resolve=True), device)
    rows = pd.DataFrame([row for name in cfg.models for row in bench_model(name, cfg, device, precision)])
    rows["git_sha"], rows["date"] = started["git_sha"], started["date"]
    frame = merge_with_other_devices(Path(cfg.paths.results_dir) / f"{cfg.out_name}.csv", rows)
    sections = []
    for (device_label, row_precision), group in frame.groupby(["device", "precision"], sort=False):
        shown = group.drop(columns=["device", "precision"]).rename(columns={
            "sigma": "|Sigma|", "batch_tokens": "tokens/batch", "teacher_tokens_per_s": "teacher tok/s",
            "distill_tokens_per_s": "distill tok/s", "throughput_ratio": "distill / teacher",
            "teacher_mfu": "teacher MFU", "distill_mfu": "distill MFU", "teacher_peak_rise_mb": "teacher peak MB",
            "distill_peak_rise_mb": "distill peak MB", "git_sha": "git"})
        shown["git"] = shown["git"].str[:12]
        if shown["distill MFU"].isna().all():
            shown = shown.drop(columns=["teacher MFU", "distill MFU"])
        sections.append((f"{device_label}, {row_precision}", shown))
    notes = [
        f"Per row: median of {cfg.repeats} timed steps after {cfg.warmup} warm-up, teacher and distillation steps "
        f"interleaved in one process on one device; charset {cfg.charset}, teacher logits in chunks of "
        f"{cfg.chunk_elements:,} floats (positions x |V|). Rows from earlier runs on other devices keep their git "
        "SHA and date; the provenance below is this file's latest run.",
        "teacher: a plain forward of the teacher, `model(ids).logits` (the full |V| logits), no grad. distill: one "
        "heads-only training step (frozen backbone pass, chunked teacher marginals, k heads, backward, AdamW). "
        "On a GPU both run under bf16 autocast with fp32 weights (trainer=gpu); on CPU in fp32.",
        "MFU: model FLOPs per token (spellm_exp.bench_distill.step_flops_per_token: 2 x non-embedding parameters, "
        "causal attention, the teacher's logits, and for distill the heads' forward and weight gradient) x tokens/s "
        "/ the device's dense bf16 peak; only where that peak is known.",
        "Peak MB: rise over the resting level during one such step (CPU: process peak RSS; GPU: allocator peak); "
        "the chunked loss keeps it below the teacher's own logits and flat in k.",
        "origin: 'random init' rows are real-size architectures with random weights: they measure speed, not "
        "quality. Dequantised GGUF rows are the real pretrained teachers.",
    ]
    command = "python -m spellm_exp.bench_distill " + " ".join(sys.argv[1:])
    write_table(cfg.paths.results_dir, cfg.out_name, "Heads-only distillation throughput and memory", command.strip(),
                frame, sections, notes, started)


if __name__ == "__main__":
    main()
