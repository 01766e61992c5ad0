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
    """acc_norm where the harness reports it, acc otherwise."""
    return "acc_norm" if "acc_norm,none" in metrics else "acc"


def average_accuracy(results: dict, tasks: list[str]) -> float:
    """Mean over tasks of the primary metric."""
    return sum(results[t][f"{primary_metric(t, results[t])},none"] for t in tasks) / len(tasks)


def _per_doc(samples: Path, task: str, metric: str) -> pd.Series:
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return pd.Series({r["doc_id"]: r[metric] for r in rows if r["task"] == task}).sort_index()


def paired_difference(base_dir: Path, other_dir: Path, task: str, metric: str) -> tuple[float, float, int]:
    """Mean and standard error of the per-document other - base differences, and how many documents."""
    diff = (_per_doc(other_dir / "samples.jsonl", task, metric)
            - _per_doc(base_dir / "samples.jsonl", task, metric)).dropna()
    n = len(diff)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), n
