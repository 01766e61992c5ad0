"""Numbers from harness results: each task's primary metric, accuracy averages, and paired per-document
differences between two evaluations of the same documents."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd


def harness_results(eval_dir: Path) -> dict:
    """The per-task metrics of an evaluation folder (evaluation.run writes them)."""
    return json.loads((eval_dir / "results.json").read_text())["results"]


def primary_metric(task: str, metrics: dict) -> str:
    """acc_norm where the harness reports it, acc otherwise; bits_per_byte for a likelihood task."""
    if "bits_per_byte,none" in metrics:
        return "bits_per_byte"
    return "acc_norm" if "acc_norm,none" in metrics else "acc"


def is_accuracy(metric: str) -> bool:
    return metric in ("acc", "acc_norm")


def average_accuracy(results: dict, tasks: list[str]) -> float:
    """Mean over the accuracy tasks of the primary metric."""
    scores = [results[t][f"{metric},none"] for t in tasks if is_accuracy(metric := primary_metric(t, results[t]))]
    return sum(scores) / len(scores)


def _task_samples(samples: Path, task: str) -> list[dict]:
    """The per-document records of `task` in a samples.jsonl (evaluation.run writes it)."""
    return [row for line in samples.read_text().splitlines() if (row := json.loads(line))["task"] == task]


def _per_doc(samples: Path, task: str, metric: str) -> pd.Series:
    rows = _task_samples(samples, task)
    if metric == "bits_per_byte":  # each document's own: -log2 p(text) / its bytes
        return pd.Series({r["doc_id"]: -r["loglikelihood"] / (r["bytes"] * math.log(2)) for r in rows}).sort_index()
    return pd.Series({r["doc_id"]: r[metric] for r in rows}).sort_index()


def relative_bpb_gap(base_dir: Path, other_dir: Path, task: str) -> float:
    """other's bits per byte over base's, minus 1, both over the same documents (all their bytes pooled, as
    the harness aggregates bits_per_byte)."""
    def pooled(folder: Path) -> pd.DataFrame:
        rows = _task_samples(folder / "samples.jsonl", task)
        return pd.DataFrame(rows).set_index("doc_id")[["loglikelihood", "bytes"]]

    base, other = pooled(base_dir), pooled(other_dir)
    shared = base.index.intersection(other.index)
    return float(other.loc[shared, "loglikelihood"].sum() / base.loc[shared, "loglikelihood"].sum() - 1)


def paired_difference(base_dir: Path, other_dir: Path, task: str, metric: str) -> tuple[float, float, int]:
    """Mean and standard error of the per-document other - base differences, and how many documents."""
    diff = (_per_doc(other_dir / "samples.jsonl", task, metric)
            - _per_doc(base_dir / "samples.jsonl", task, metric)).dropna()
    n = len(diff)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), n
