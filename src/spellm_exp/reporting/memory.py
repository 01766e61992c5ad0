"""The memory-per-GPU table (results/distill_memory.{md,csv}) from benchmarks.memory_plan's estimates."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.benchmarks.memory_plan import LOGIT_BYTES, Setting, Shape, plan
from spellm_exp.provenance import provenance
from spellm_exp.reporting.tables import write_table
from spellm_exp.teachers.architectures import REAL_SIZE
from spellm_exp.teachers.loader import DTYPES


def write_memory_table(cfg: DictConfig, command: str) -> list[Path]:
    """The estimate for every architecture of `cfg.architectures`, as a table."""
    started = provenance(OmegaConf.to_container(cfg, resolve=True))
    setting = Setting(cfg.k, cfg.sigma, cfg.batch_size * cfg.block_size, cfg.chunk_elements,
                      DTYPES[cfg.weights_dtype].itemsize)
    rows = [{"teacher": name, **plan(Shape.of(REAL_SIZE[name]()), setting, cfg.fsdp_devices)}
            for name in cfg.architectures]
    frame = pd.DataFrame(rows)
    shown = frame.rename(columns={
        "params_M": "params (M)", "logits_MB_per_token": "fp32 logits per token (MB)",
        "loss_unchunked_GB": "loss, unchunked (GB)", "loss_chunked_GB": "loss, chunked (GB)",
        "heads_adamw_GB": "heads + AdamW (GB)", "activations_GB": "activations (GB)",
        "ddp_weights_GB": "weights (GB)", "ddp_total_GB": "DDP per GPU (GB)",
        "fsdp_weights_GB": f"weights / {cfg.fsdp_devices} + 1 block (GB)",
        "fsdp_total_GB": f"FSDP x{cfg.fsdp_devices} per GPU (GB)"})
    notes = [
        f"Heads-only distillation, k={cfg.k}, |Sigma|={cfg.sigma}, {cfg.batch_size} x {cfg.block_size} tokens per "
        f"GPU, {cfg.weights_dtype} weights, bf16-mixed (trainer=gpu|ddp|fsdp), loss.chunk_elements="
        f"{cfg.chunk_elements:,}.",
        "An estimate from the configs (parameters counted exactly on the meta device): weights + heads with AdamW "
        "state + the loss's teacher logits + the frozen forward's activations. Add the CUDA context and allocator "
        "slack (about 1-2 GB).",
        f"loss: per logit element {LOGIT_BYTES} bytes (bf16 logits, fp32 softmax, its transposed copy). Chunked, "
        "at most loss.chunk_elements of them at a time, whatever |V| and the batch; unchunked, every position of "
        "the batch at once.",
        "Architectures at real size (see offline-assets.md); the memory does not depend on weight values.",
    ]
    return write_table(cfg.paths.results_dir, cfg.out_name, "Memory per GPU for heads-only distillation (estimate)",
                       command, frame, [("Per teacher", shown)], notes, started)
