"""Every typed config schema of the project, and their registration in Hydra's ConfigStore.

The dataclasses here are plain Python (no Hydra, no Lightning), so any stage can import them. Each
command's primary config in `conf/` starts its defaults list with its schema (`train_schema`,
`bench_schema`, ...), so a bad key or value fails in Hydra's composition with Hydra's own message, before
anything loads. `register_configs()` stores them; the `cli/` entry points call it at import, and
`compose_config` calls it for library code (and tests) that compose a config outside a Hydra app.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

# conf/ ships inside the package (package data), so a plain `pip install .` finds it as well as an editable one
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")


# --- the method --------------------------------------------------------------------------------
class CharsetKind(str, Enum):
    chars = "chars"
    bytes = "bytes"
    ascii = "ascii"


@dataclass
class CharsetConfig:
    """The `charset` config group: `kind`, for `chars` the number of characters N (|Sigma| = N + 2), and
    `escape`: character alphabets also spell any other byte as two of 16 nibble symbols (|Sigma| + 16), so
    every text has a finite likelihood (method.md); ignored by `bytes`, which spells every byte already."""

    kind: CharsetKind = CharsetKind.chars
    size: int = 64
    escape: bool = True


class HeadInit(str, Enum):
    unembedding_mean = "unembedding_mean"
    random = "random"


class HeadKind(str, Enum):
    linear = "linear"  # the paper's k independent linear heads
    mlp = "mlp"  # a shared residual MLP trunk before the k linear heads
    mixture = "mixture"  # M products of per-position distributions, mixed by a small head
    autoregressive = "autoregressive"  # linear heads plus a character decoder over the earlier characters
    shortlist = "shortlist"  # the L most frequent tokens scored exactly, plus the linear heads' product for the rest


@dataclass
class HeadsConfig:
    """The `heads` config group (conf/heads/*.yaml): the SpeLLM's output layer. Each field is read by its kind."""

    kind: HeadKind = HeadKind.linear
    trunk_multiple: int = 4  # mlp: the trunk's width r = trunk_multiple x d (d -> r -> d, residual)
    components: int = 4  # mixture: M
    decoder_size: int = 128  # autoregressive: width r of the character decoder
    shortlist: int = 4096  # shortlist: L, the most frequent tokens (of the distillation text) scored as tokens
    # shortlist: what spells the rest: linear (k independent heads) | mlp (those heads after the mlp type's trunk,
    # trunk_multiple) | autoregressive (those heads plus the autoregressive type's character decoder, decoder_size)
    rest: HeadKind = HeadKind.linear
    # shortlist: the rest's share for strings that are no rest vocabulary token. 1.0: the rest spreads over all of
    # Sigma^k (its product puts most of its mass on strings no token spells); below 1: the rest renormalised over
    # the vocabulary strings outside the shortlist, this share left to every other string (finite likelihoods)
    rest_outside: float = 1.0
    # shortlist: also score exactly, by the teacher's unembedding rows, the tokens each position's input has held so
    # far (spellable, outside the list): repeated rare tokens (names, copied terms) leave the rest (core/context.py)
    context_tokens: bool = False
    # shortlist: 0, every list row a full d-vector; r > 0, the rows after the first `exact_rows` (the most frequent
    # tokens) are one rank-r product (tail_out [L - exact_rows, r] x tail_in [r, d]): fewer weights read per decode
    # step (results/list_rank.md measures what a rank costs)
    tail_rank: int = 0
    exact_rows: int = 0


# --- teachers ----------------------------------------------------------------------------------
class Init(str, Enum):
    pretrained = "pretrained"
    random = "random"  # the architecture with random weights: for runtime measurement only


@dataclass
class ModelConfig:
    """The `model` config group (conf/model/*.yaml); Hydra validates overrides against it."""

    name: str = "llama"
    path: str | None = None  # a local HF folder or a hub id; replaces the built-in source
    init: Init = Init.pretrained
    dtype: str = "float32"
    # auto: SDPA (PyTorch's fused kernels) where the architecture supports it, else eager | sdpa | eager |
    # flash_attention_2 (if installed)
    attn_implementation: str = "auto"
    seed: int = 0  # for random init
    cache_dir: str | None = None  # GGUF conversions and tokenizers; None: ~/.cache/spellm_exp
    # where the weights are made: random init is built on the meta device and materialised there, in `dtype`,
    # without a CPU copy (an 8B model in bf16 on a GPU in seconds); the bench sets it to the device it times on
    device: str = "cpu"


# --- data and training -------------------------------------------------------------------------
@dataclass
class DataConfig:
    """The `data` config group."""

    sources: list[str] = field(default_factory=lambda: ["boolq", "hellaswag", "shakespeare"])
    max_chars_per_source: int | None = None  # None: everything
    block_size: int = 128
    batch_size: int = 8
    val_blocks: int = 32
    num_workers: int = 0
    seed: int = 0
    cache_dir: str | None = None  # tokenized blocks; None: no disk cache


class Trainable(str, Enum):
    heads = "heads"
    lora = "lora"
    full = "full"


@dataclass
class TrainConfig:
    """The `train` node: what trains and how."""

    trainable: Trainable = Trainable.heads
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decay to this share of lr by trainer.max_steps
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    cache_features: bool = False  # heads only: keep the frozen backbone's outputs on disk for later runs
    cache_targets: bool = False  # with cache_features: keep the teacher's targets too (long runs over few blocks)
    # a SpeLLM checkpoint (run or spellm folder) of the same teacher, k and alphabet whose head parameters of the
    # same name and shape start this run (e.g. a trained shortlist's rows, gate and heads under a new decoder)
    init_from: str | None = None
    # parts of the heads (their attribute names: a shortlist's weight, bias, gate, linear, ...) that stay as they
    # start, e.g. a trained shortlist's rows and gate while only its rest trains on top of it (train.init_from)
    freeze_heads: list[str] = field(default_factory=list)


class LossObjective(str, Enum):
    auto = "auto"  # marginal for heads that factorise over positions (linear, mlp), token for the others
    marginal = "marginal"  # mean over heads of KL(q_i || p_i), the teacher's per-position marginals
    token = "token"  # KL(q || p) over the teacher's vocabulary strings


@dataclass
class LossConfig:
    objective: LossObjective = LossObjective.auto
    # token objective, for heads that do not factorise: the teacher's top_k tokens exactly, the rest of its
    # mass by tail_samples tokens drawn from it (an unbiased estimate); factorised heads need neither
    top_k: int = 16
    tail_samples: int = 4
    # heads=shortlist with a product rest: the rest's tokens enter the token objective exactly (the teacher's
    # marginals over them), not through the top_k / tail_samples estimate, which rarely draws one
    exact_rest: bool = False
    temperature: float = 1.0
    ce_weight: float = 0.0
    chunk_elements: int = 16_777_216  # teacher logits per chunk (positions x |V|): bounds the loss's memory

    def chunk_positions(self, vocab_size: int) -> int:
        return max(1, self.chunk_elements // vocab_size)


@dataclass
class CheckpointConfig:
    every_n_train_steps: int = 50  # Lightning checkpoint (resume) and SpeLLM export


@dataclass
class PathsConfig:
    cache_dir: str = "~/.cache/spellm_exp"
    output_dir: str = "outputs"
    results_dir: str = "results"
    features_dir: str = "~/.cache/spellm_exp/features"


# --- the commands' primary configs --------------------------------------------------------------
@dataclass
class _Command:
    task_name: str = "run"
    paths: PathsConfig = field(default_factory=PathsConfig)


@dataclass
class _WithModel(_Command):
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class TrainJob(_WithModel):
    """conf/train.yaml: one distillation run."""

    profile: str = "quick"  # conf/profile/: quick | full (the training keys are in conf/training_profile/)
    k: int = 16
    seed: int = 0
    heads_init: HeadInit = HeadInit.unembedding_mean
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    ckpt_path: str | None = None  # "last": resume from <run folder>/checkpoints/last.ckpt
    charset: CharsetConfig = field(default_factory=CharsetConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    trainer: Any = None  # Lightning Trainer arguments (conf/trainer/), instantiated as they are
    logger: Any = None  # {name: logger arguments} (conf/logger/)


@dataclass
class SweepEval:
    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "piqa", "sciq"])
    limit: int | None = 50  # documents per task; None: all
    num_fewshot: int = 0
    batch_size: int = 8
    score: str = "product"


@dataclass
class SweepConfig:
    """The `sweep` node of conf/sweep.yaml (the rest of a sweep job's config is train.yaml's)."""

    name: str = "sweep"
    teacher_eval_dir: str = "outputs/sweeps/sweep/teacher"
    eval: SweepEval = field(default_factory=SweepEval)
    bench: dict[str, Any] = field(default_factory=dict)  # bench_schema's keys, checked when the bench composes


@dataclass
class DecodeConfig:
    """How a SpeLLM or teacher generates (core.decoding): `mode` free | vocab for a SpeLLM's heads, `backend`
    eager | compiled (static KV cache, backbone step + head compiled as one function: a CUDA graph on a GPU),
    `compiler` auto | cudagraphs | inductor for the compiled backend."""

    mode: str = "free"
    backend: str = "eager"
    compiler: str = "auto"


@dataclass
class DecodeTiming:
    """How the decode bench times a model: prompt length, backbone steps, warm-up and timed runs (a Table 2
    profile is one of these)."""

    prompt_tokens: int = 64
    decode_steps: int = 32
    warmup: int = 1
    repeats: int = 3


@dataclass
class BenchJob(DecodeTiming, _WithModel):
    """conf/bench.yaml: decode-step runtime, teacher vs SpeLLM."""

    k: int = 16
    charset: CharsetConfig = field(default_factory=lambda: CharsetConfig(kind=CharsetKind.bytes))
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    checkpoint: str | None = None
    device: str = "auto"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    layer_repeats: int = 50
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    threads: int | None = None
    seed: int = 0
    prompts_file: str | None = None
    measure_bandwidth: bool = True
    out_file: str | None = None


@dataclass
class EvalJob(_WithModel):
    """conf/eval.yaml: the harness on a SpeLLM or a teacher."""

    run_dir: str | None = None
    variant: str = "spellm"
    tasks: list[str] = field(default_factory=list)
    num_fewshot: int = 0
    limit: int | None = None
    batch_size: int = 8
    score: str = "product"
    decode: DecodeConfig = field(default_factory=DecodeConfig)


@dataclass
class DescribeJob(_WithModel):
    prompt: str = "The capital of France is"
    max_new_tokens: int = 12


@dataclass
class CorpusSlice:
    sources: list[str] = field(default_factory=lambda: ["boolq", "hellaswag", "shakespeare"])
    max_chars_per_source: int | None = None


@dataclass
class CoverageJob(_Command):
    tokenizers: list[str] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    chars_sizes: list[int] = field(default_factory=list)
    other_charsets: list[str] = field(default_factory=list)
    corpus: CorpusSlice = field(default_factory=CorpusSlice)
    out_name: str = "coverage"


@dataclass
class MemoryPlanJob(_Command):
    architectures: list[str] = field(default_factory=list)
    k: int = 16
    sigma: int = 258
    batch_size: int = 8
    block_size: int = 1024
    chunk_elements: int = 16_777_216
    weights_dtype: str = "float32"
    fsdp_devices: int = 8
    out_name: str = "distill_memory"


@dataclass
class BenchDistillJob(_Command):
    models: list[str] = field(default_factory=list)
    init: Init = Init.pretrained
    device: str = "auto"
    precision: str = "auto"
    ks: list[int] = field(default_factory=list)
    charset: CharsetKind = CharsetKind.bytes
    batch_size: int = 8
    block_size: int = 128
    corpus_chars: int = 400_000
    chunk_elements: int = 16_777_216
    warmup: int = 2
    repeats: int = 5
    out_name: str = "distill_throughput"


@dataclass
class Table1Profile:
    models: list[str] = field(default_factory=list)
    limit: int | None = None
    # model -> the names of `head_types` that are its rows (a model not named here: every head type)
    head_types: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Table1Job(_Command):
    profile: str = "quick"  # conf/profile/: a key of `profiles`; also the training profile of the SpeLLMs it distils
    profiles: dict[str, Table1Profile] = field(default_factory=dict)
    experiments: dict[str, str] = field(default_factory=dict)
    head_types: dict[str, list[str]] = field(default_factory=lambda: {"linear": []})  # name -> train overrides
    distil_missing: bool = True  # false: a head type whose run has not finished is left out (and listed)
    reuse_archived: bool = True  # false: read nothing back from results/table1_evals (scored rows still go there)
    only: list[str] = field(default_factory=list)  # model/head_type rows to distil and score now (empty: all)
    tasks: list[str] = field(default_factory=list)
    num_fewshot: int = 0
    batch_size: int = 8
    score: str = "product"


@dataclass
class Table2Job(_Command):
    profile: str = "quick"  # conf/profile/: a key of `profiles`
    device: str = "auto"
    dtype: str = "auto"
    run_bench: bool = True
    bench_dir: str = "results/bench"
    profiles: dict[str, DecodeTiming] = field(default_factory=dict)
    entries: dict[str, list[str]] = field(default_factory=dict)
    common: list[str] = field(default_factory=list)  # bench overrides for every entry
    prompts_file: str | None = None  # bench prompts from this JSON list of passages (the GPU bundle's)
    only: list[str] = field(default_factory=list)  # bench these entries alone (the others keep their records)
    keep_going: bool = False  # a failing entry: retry with `retry_with`, else record it as skipped, and go on
    retry_with: list[str] = field(default_factory=list)


@dataclass
class Table3Job(_Command):
    sweep_dir: str = "outputs/sweeps/table3-quick"
    sweep_command: str = ""


@dataclass
class AblationJob(_Command):
    experiment: str = "smollm2_k16"
    train_profile: str = "quick"
    tasks: list[str] = field(default_factory=list)
    limit: int | None = 100
    num_fewshot: int = 0
    batch_size: int = 8
    score: str = "product"
    other_scores: list[str] = field(default_factory=list)
    ceilings: list[str] = field(default_factory=lambda: ["teacher_marginals"])
    ceiling_scores: list[str] = field(default_factory=list)  # also score the first ceiling these ways
    # ceilings built from each variant's own heads (teacher_shortlist, teacher_shortlist_weights), scored for
    # every variant whose head type has them
    variant_ceilings: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=dict)
    table_name: str = "quality_ablation"  # results/<table_name>.{md,csv}


@dataclass
class ListRankModel:
    checkpoint: str = ""  # a heads=shortlist training run folder (or its spellm/ folder)
    data: DataConfig = field(default_factory=DataConfig)  # the text its hidden states come from (its distillation data)


@dataclass
class ListRankJob(_Command):
    """conf/list_rank.yaml: the ceiling of a rank-r shortlist list (experiments/list_rank.py)."""

    models: dict[str, ListRankModel] = field(default_factory=dict)
    exact_rows: list[int] = field(default_factory=lambda: [0])  # rows kept exact before the factored tail
    ranks: list[int] = field(default_factory=list)
    fit_blocks: int = 64  # the last training blocks, whose hidden states fit the factors
    refine_steps: int = 100
    refine_batch: int = 512
    refine_lr: float = 1.0e-3
    out_name: str = "list_rank"


@dataclass
class GpuBundleJob(_Command):
    """conf/gpu_bundle.yaml: the folder that runs the GPU Table 2 on a bare GPU machine."""

    out_dir: str = "dist/gpu-bundle"
    table: str = "table2_gpu"  # the table config whose entries the bundle must serve


@dataclass
class QuickstartJob(_Command):
    """conf/quickstart.yaml: the method end to end in minutes (experiments/quickstart.py)."""

    experiment: str = "smollm2_k16"
    head_type: str = "shortlist_16k_qa_seen_teacher_rows"  # a row of conf/table1.yaml's head_types
    train_overrides: list[str] = field(default_factory=list)  # on top of the experiment and the head type
    tasks: list[str] = field(default_factory=list)
    limit: int = 10  # documents per task
    batch_size: int = 8
    bench: dict[str, Any] = field(default_factory=dict)  # bench_schema's keys; the checkpoint comes from the run


COMMAND_SCHEMAS = {"train": TrainJob, "bench": BenchJob, "eval": EvalJob, "describe": DescribeJob,
                   "coverage": CoverageJob, "memory_plan": MemoryPlanJob, "bench_distill": BenchDistillJob,
                   "table1": Table1Job, "table2": Table2Job, "table3": Table3Job, "ablation": AblationJob,
                   "gpu_bundle": GpuBundleJob, "list_rank": ListRankJob, "quickstart": QuickstartJob}


def register_configs() -> None:
    """Store every schema: `<command>_schema` for the primary configs, `<group>_schema` for the groups."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name, schema in COMMAND_SCHEMAS.items():
        store.store(name=f"{name}_schema", node=schema)
    store.store(name="sweep_schema", node=SweepConfig, package="sweep")  # sweep.yaml = train.yaml + this node
    # outside the groups, so that `model=model_schema` is not offered as a model: each group file extends its
    # schema with `- /<group>_schema@_here_`
    for group, schema in (("model", ModelConfig), ("charset", CharsetConfig), ("heads", HeadsConfig),
                          ("data", DataConfig)):
        store.store(name=f"{group}_schema", node=schema)


def compose_config(name: str, overrides: list[str] | tuple[str, ...] = (), with_hydra: bool = False):
    """The config `name` of conf/ with `overrides`, inside a running Hydra app or outside one (`with_hydra`: with
    its `hydra` node, whose runtime.choices name the option chosen in each config group)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():  # inside a command's own Hydra app: the same conf/
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=with_hydra)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=with_hydra)


def typed(schema, node):
    """A config node as its schema's dataclass (defaults filled in, values validated)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))


def model_config(cfg) -> ModelConfig:
    """The typed model config; an unset cache_dir falls back to paths.cache_dir."""
    model: ModelConfig = typed(ModelConfig, cfg.model)
    if model.cache_dir is None and "paths" in cfg:
        model.cache_dir = cfg.paths.cache_dir
    return model
