"""The distillation-throughput table (results/distill_throughput.{md,csv}): this run's rows beside the earlier
runs' rows of other devices and precisions, one section per (device, precision)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from spellm_exp.reporting.tables import write_table


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


def write_throughput_table(cfg: DictConfig, rows: pd.DataFrame, started: dict, command: str) -> list[Path]:
    """Write this run's `rows` (from benchmarks.distill.bench_model) with the kept rows of other devices."""
    rows = rows.copy()
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
        f"interleaved in one process on one device; charset {cfg.charset.value}, teacher logits in chunks of "
        f"{cfg.chunk_elements:,} floats (positions x |V|). Rows from earlier runs on other devices keep their git "
        "SHA and date; the provenance below is this file's latest run.",
        "teacher: a plain forward of the teacher, `model(ids).logits` (the full |V| logits), no grad. distill: one "
        "heads-only training step (frozen backbone pass, chunked teacher marginals, k heads, backward, AdamW). "
        "On a GPU both run under bf16 autocast with fp32 weights (trainer=gpu); on CPU in fp32.",
        "MFU: model FLOPs per token (spellm_exp.benchmarks.distill.step_flops_per_token: 2 x non-embedding parameters, "
        "causal attention, the teacher's logits, and for distill the heads' forward and weight gradient) x tokens/s "
        "/ the device's dense bf16 peak; only where that peak is known.",
        "Peak MB: rise over the resting level during one such step (CPU: process peak RSS; GPU: allocator peak); "
        "the chunked loss keeps it below the teacher's own logits and flat in k.",
        "origin: 'random init' rows are real-size architectures with random weights: they measure speed, not "
        "quality. Dequantised GGUF rows are the real pretrained teachers.",
    ]
    return write_table(cfg.paths.results_dir, cfg.out_name, "Heads-only distillation throughput and memory",
                       command, frame, sections, notes, started)
