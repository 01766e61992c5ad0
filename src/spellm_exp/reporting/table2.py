"""Table 2, decode-step runtime (`python -m spellm_exp.table2 [profile=quick|full] [run_bench=false]`).

Runs the decode bench (benchmarks.decode) for each entry of conf/table2.yaml (the real teachers, then the real-size
random-init architectures) and keeps each record as results/bench/<device>/<entry>.json; then
builds results/table2.{md,csv} and results/table2.png from every record under results/bench/,
so runs from another machine (a GPU) join the table as rows of their own device. A ratio is only
ever taken between teacher and SpeLLM timed side by side in one run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import statistics
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.benchmarks.decode import base_record, paired_ratios, run_bench
from spellm_exp.benchmarks.measure import BenchConfigError, resolve_device
from spellm_exp.config import compose_config
from spellm_exp.core.heads import heads_label
from spellm_exp.provenance import provenance
from spellm_exp.reporting.tables import write_table
from spellm_exp.reporting.tradeoff import plot_tradeoff, quality_gaps, tradeoff_frame
from spellm_exp.teachers import ORIGIN_RANDOM

log = logging.getLogger(__name__)


def device_slug(record: dict) -> str:
    return re.sub(r"[^a-z0-9]+", "-", record["provenance"]["device"].lower()).strip("-")


def table_frames(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(readable rows, tidy rows) from bench records: one row per record and batch size."""
    rows, tidy = [], []
    for record in sorted(records, key=_order):
        base = {"model": record.get("teacher", {}).get("description", record.get("description", record["model"])),
                "init": record["init"],
                "device": record["provenance"]["device"], "dtype": record["dtype"]}
        if "skipped" in record:
            rows.append({**base, "batch": "", "note": f"skipped: {record['skipped']}"})
            continue
        heads, loop = record_heads(record), record_loop(record)
        floor = record.get("bandwidth", {})
        for batch in record["batches"]:
            teacher, spellm, layer = batch["teacher"], batch["spellm"], batch["output_layer"]
            pairs = paired_ratios(batch)
            ratio = statistics.median(pairs)
            row = {**base, "loop": loop, "batch": batch["batch_size"],
                   "SpeLLM": f"k={record['spellm']['k']} {record['spellm']['alphabet']} {heads}",
                   "step ms teacher": teacher["step_ms"], "step ms SpeLLM": spellm["step_ms"],
                   "teacher / floor": teacher["step_ms"] / floor["teacher_floor_ms"] if floor else "",
                   "measured ratio": ratio, "ratio range": f"{min(pairs):.3f}-{max(pairs):.3f}",
                   "repeats": len(pairs), "bound": record["bound"]["ratio"], "reduction %": 100 * (1 - ratio),
                   "chars/step teacher": teacher["chars_per_step"], "chars/step SpeLLM": spellm["chars_per_step"],
                   "chars/s teacher": teacher["chars_per_s"], "chars/s SpeLLM": spellm["chars_per_s"],
                   "string->ids % of step": 100 * layer["host_share_of_spellm_step"],
                   "note": ("distilled heads" if record["spellm"]["heads"].startswith("distilled") else "heads at init")
                   + (f"; retried {record['retried']}" if "retried" in record else "")
                   + (f"; {record['entry']}" if "entry" in record else "")}
            rows.append(row)
            tidy.append({**base, "loop": loop, "batch": batch["batch_size"], "k": record["spellm"]["k"],
                         "head_type": heads, "copy_gb_s": floor.get("copy_gb_s"),
                         "teacher_floor_ms": floor.get("teacher_floor_ms"),
                         "spellm_floor_ms": floor.get("spellm_floor_ms"),
                         "head_params": record["spellm"].get("head_params"),
                         "sigma": record["spellm"]["sigma"], "teacher_step_ms": teacher["step_ms"],
                         "spellm_step_ms": spellm["step_ms"], "teacher_prefill_ms": teacher["prefill_ms"],
                         "spellm_prefill_ms": spellm["prefill_ms"], "ratio": ratio, "ratio_min": min(pairs),
                         "ratio_max": max(pairs), "repeats": len(pairs),
                         "ratio_of_medians": spellm["step_ms"] / teacher["step_ms"],
                         "bound": record["bound"]["ratio"], "teacher_chars_per_s": teacher["chars_per_s"],
                         "spellm_chars_per_s": spellm["chars_per_s"], "teacher_tokens_per_s": teacher["tokens_per_s"],
                         "spellm_tokens_per_s": spellm["tokens_per_s"],
                         "spellm_chars_per_step": spellm["chars_per_step"],
                         "teacher_chars_per_step": teacher["chars_per_step"],
                         "spellm_non_vocab_share": spellm["non_vocab_share"],
                         "teacher_peak_mb": teacher["peak_memory_mb"], "spellm_peak_mb": spellm["peak_memory_mb"],
                         "teacher_output_layer_ms": layer["teacher_ms"], "spellm_output_layer_ms": layer["spellm_ms"],
                         # records before the cold timings have none
                         "teacher_output_layer_cold_ms": layer.get("teacher_cold_ms"),
                         "spellm_output_layer_cold_ms": layer.get("spellm_cold_ms"),
                         "spellm_host_ms": layer["spellm_host_ms"],
                         "host_share_of_spellm_step": layer["host_share_of_spellm_step"],
                         "heads": record["spellm"]["heads"], "entry": record.get("entry", ""),
                         "git_sha": record["provenance"]["git_sha"],
                         "date": record["provenance"]["date"]})
    return pd.DataFrame(rows).astype(object).fillna(""), pd.DataFrame(tidy)


def record_heads(record: dict) -> str:
    """The SpeLLM's head type in a bench record (records from before head types held linear heads)."""
    return heads_label(record.get("spellm", {}).get("head_type", {"kind": "linear"}))


def record_loop(record: dict) -> str:
    """The decode backend of a bench record (records from before backends, and their `decode: free`, ran eager)."""
    decode = record.get("spellm", {}).get("decode")
    return decode.get("backend", "eager") if isinstance(decode, dict) else "eager"


def _order(record: dict) -> tuple:
    """Per device: the real teachers first, then by size, the paper's linear heads first, the eager loop before the
    compiled one; skipped records last."""
    teacher = record.get("teacher", {})
    heads = record_heads(record) if "skipped" not in record else ""
    return (record["provenance"]["device"], "skipped" in record, record["init"] == ORIGIN_RANDOM,
            teacher.get("n_params", 0), record["model"], heads != "linear", heads, record_loop(record) != "eager")


def average_reductions(tidy: pd.DataFrame) -> dict[str, float]:
    """Mean decode-step reduction (%) over the random-init architectures at batch 1, per device and decode loop
    (keyed by the device alone for the eager loop)."""
    if tidy.empty:
        return {}
    chosen = tidy[(tidy["init"] == ORIGIN_RANDOM) & (tidy["batch"] == 1) & (tidy["head_type"] == "linear")]
    return {device if loop == "eager" else f"{device}, {loop}": float(100 * (1 - group["ratio"]).mean())
            for (device, loop), group in chosen.groupby(["device", "loop"])}


def plot(tidy: pd.DataFrame, path: Path) -> None:
    """Measured decode-step ratio vs the weight-bytes bound, per model and batch, one panel per device."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    devices = sorted(tidy["device"].unique())
    width = max(9.0, 1.5 * max((tidy["device"] == d).sum() for d in devices))
    fig, axes = plt.subplots(len(devices), 1, figsize=(width, 3.8 * len(devices)), squeeze=False)
    for ax, device in zip(axes[:, 0], devices):
        rows = tidy[tidy["device"] == device].reset_index(drop=True)
        labels = [f"{m} {h}\n{d}, b={b}" for m, h, d, b in zip(rows["model"], rows["head_type"], rows["dtype"],
                                                                  rows["batch"])]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], rows["ratio"], width=0.4, label="measured")
        ax.bar([i + 0.2 for i in x], rows["bound"], width=0.4, label="weight-bytes bound")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xticks(list(x), labels, fontsize=7, rotation=20, ha="right")
        ax.set_ylim(0, 1.25)
        ax.set_ylabel("SpeLLM / teacher step")
        ax.set_title(device, fontsize=9)
        ax.legend(fontsize=8, loc="upper left", ncols=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bench_entries(cfg: DictConfig) -> None:
    """Run every entry's bench and keep its record under bench_dir/<device>/<entry>.json."""
    device = resolve_device(cfg.device)
    profile = cfg.profiles[cfg.profile]
    dtype = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    unknown = sorted(set(cfg.only) - set(cfg.entries))
    if unknown:
        raise BenchConfigError(f"only={unknown}: no such entries; use some of {list(cfg.entries)}.")
    for name, overrides in cfg.entries.items():
        if cfg.only and name not in cfg.only:  # re-time some entries; the others keep their records
            continue
        overrides = [*overrides, *cfg.common, f"device={device.type}", f"model.dtype={dtype}",
                     f"paths.cache_dir={cfg.paths.cache_dir}", *(f"{key}={value}" for key, value in profile.items()),
                     *([f"prompts_file={cfg.prompts_file}"] if cfg.prompts_file else [])]
        checkpoint = next((o.split("=", 1)[1] for o in overrides if o.startswith("checkpoint=")), None)
        if checkpoint is not None and not Path(checkpoint).exists():
            log.warning("%s: no checkpoint at %s; timing heads at init", name, checkpoint)
            overrides = [o for o in overrides if not o.startswith("checkpoint=")]
        record = _bench_entry(cfg, name, overrides, device)
        _release(device)  # compiled steps hold their model: free it before the next architecture loads
        path = Path(cfg.bench_dir) / device_slug(record) / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        log.info("wrote %s", path)


def _bench_entry(cfg: DictConfig, name: str, overrides: list[str], device) -> dict:
    """One entry's record. With `keep_going` (the GPU table: one run on a lent machine must not lose six
    architectures' figures to the seventh), a failure is retried with `retry_with` and else recorded as skipped."""
    try:
        return run_bench(compose_config("bench", overrides))
    except BenchConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of one architecture, when asked to keep going
        if not cfg.keep_going:
            raise
        log.exception("%s failed", name)
        _release(device)
        failure = f"{type(err).__name__}: {err}"[:400]
        if cfg.retry_with:
            try:
                return {**run_bench(compose_config("bench", [*overrides, *cfg.retry_with])),
                        "retried": f"with {list(cfg.retry_with)} after {failure}"}
            except Exception as again:  # noqa: BLE001
                log.exception("%s failed again with %s", name, list(cfg.retry_with))
                _release(device)
                failure = f"{type(again).__name__}: {again}"[:400]
        return {**base_record(compose_config("bench", overrides), device), "skipped": f"failed: {failure}"}


def _release(device) -> None:
    """Free what a finished or failed run held (compiled graphs, cached device memory) before the next one."""
    import gc

    import torch

    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_records(bench_dir: Path) -> list[dict]:
    """Every record under bench_dir/<device>/, each with `entry`: its file's name, the conf/table2.yaml entry that
    wrote it (rows of one model and head type can come from several entries)."""
    return [{**json.loads(p.read_text()), "entry": p.stem} for p in sorted(Path(bench_dir).glob("*/*.json"))]


def write_table2(cfg: DictConfig, command: str) -> list[Path]:
    """Bench every entry (unless `run_bench=false`), then the table and plot from every kept record."""
    if cfg.profile not in cfg.profiles:
        raise BenchConfigError(f"profile={cfg.profile} is unknown; use one of {list(cfg.profiles)}.")
    started = provenance(OmegaConf.to_container(cfg, resolve=True), resolve_device(cfg.device))
    if cfg.run_bench:
        bench_entries(cfg)
    records = load_records(Path(cfg.bench_dir))
    if not records:
        raise BenchConfigError(f"no bench records under {cfg.bench_dir}; run with run_bench=true first.")
    shown, tidy = table_frames(records)
    Path(cfg.paths.results_dir).mkdir(parents=True, exist_ok=True)
    # a bare GPU machine running the bundle may lack matplotlib: the table still comes, the plot from the records later
    can_plot = importlib.util.find_spec("matplotlib") is not None
    if can_plot:
        plot(tidy, Path(cfg.paths.results_dir) / "table2.png")
    else:
        log.warning("matplotlib is not installed: no table2.png (rebuild it from the records with run_bench=false)")
    averages = average_reductions(tidy)
    settings = {json.dumps(r.get("settings", {}), sort_keys=True) for r in records if "settings" in r}
    notes = [
        "Teacher and SpeLLM decode through the same loop (`decoding.Decoder`) on the same backbone object, prompts, "
        "device, dtype and batch, interleaved after warm-up; greedy, EOS ignored, a fixed number of backbone steps. "
        "step ms: median time of a decode step (backbone step + output head, which also picks the next input id "
        "on the device) with the host's reading of it. loop: `eager` (the step as written, read every step) or "
        "`compiled` (static KV cache, backbone step + head as one compiled function replayed as a CUDA graph on a "
        "GPU, read every 16 steps; its step ms is the mean over the run).",
        "teacher / floor: the teacher's step over its bandwidth floor, the bytes of weights a step reads "
        "(P_nonembedding + |V| d) at the copy bandwidth measured in the same run (records that measured it).",
        "measured ratio: the median over the timed repeats of SpeLLM step / teacher step, the two runs of a repeat "
        "back to back (a shared machine drifts between repeats and moves both sides: each repeat is a pair); ratio "
        "range: its smallest and largest repeat; repeats: how many (table2.csv's ratio_of_medians is the two sides' "
        "median steps' ratio, what this column showed before). bound = (P_nonembedding + P_heads) "
        "/ (P_nonembedding + |V| d), the weight-bytes bound of method.md (P_heads = k |Sigma| d for the paper's "
        "linear heads, the head module's parameters for the other head types); reduction % = 100 (1 - measured ratio).",
        "Head types (`heads=`): `linear` is the paper's; `mlp`, `mixture-M` and `autoregressive` are this project's "
        "(method.md). Their rows time the same loop with that output layer (the autoregressive heads take k small "
        "sequential steps inside the decode step).",
        "string->ids % of step: host time reading one SpeLLM step (strings and their ids) over the SpeLLM step; the "
        "next input id itself is found on the device (records before that: the host's string -> ids inside the step).",
        "chars/step and chars/s: output characters per decode step and row, and per second over the batch. They depend "
        "on what the heads emit: a string that is not one vocabulary token is fed back as several ids, one per step, "
        "and quickly distilled or random heads emit shorter strings than the teacher's tokens.",
        "SmolLM2 and Gemma-3-270M are the real teachers (dequantised GGUF weights), each with its distilled quick "
        "SpeLLM where one exists (the note says which). The other rows are real-size architectures with random "
        "weights and heads at init: they measure speed, not quality.",
        "Average reduction over the random-init architectures at batch 1 (linear heads), per device (and loop, "
        "where not eager): "
        + ", ".join(f"{device}: {value:.1f}%" for device, value in averages.items()) + " (paper: 5.1%).",
        f"Bench settings: {sorted(settings)}; records written at git SHAs "
        f"{sorted({r['provenance']['git_sha'][:12] for r in records})}.",
        "Per-record details (prefill, tokens/s, peak memory, output-layer times, provenance) are in "
        "`results/bench/<device>/*.json` and `table2.csv`.",
    ]
    sections = [("Decode step", shown)]
    tradeoff = tradeoff_frame(quality_gaps(Path(cfg.paths.results_dir)), tidy, started["device"])
    if not tradeoff.empty:
        if can_plot:
            plot_tradeoff(tradeoff, Path(cfg.paths.results_dir) / "tradeoff.png", started["device"])
        sections.append(("Quality vs speed per head type", tradeoff))
        notes.append(f"Quality vs speed: each SpeLLM's average paired accuracy difference to its teacher (from "
                     f"results/table1.csv and results/quality_ablation.csv, as those were written) next to its "
                     f"decode-step ratio on {started['device']} from the table above; plot `tradeoff.png`.")
    return write_table(cfg.paths.results_dir, "table2", "Table 2: decode-step runtime, teacher vs SpeLLM", command,
                       tidy, sections, notes + ["Plot: `table2.png` (measured ratio vs bound)."], started)
