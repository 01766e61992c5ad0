"""Rows of the quality tables (Table 1, the ablation): each variant's accuracy per task and on average, and
its paired per-document difference to a baseline on the same documents."""

from __future__ import annotations

import math
from pathlib import Path

from spellm_exp.evaluation.metrics import is_accuracy, paired_difference, primary_metric, relative_bpb_gap


def accuracy_row(model: str, name: str, variant: str, results: dict, tasks: list[str]) -> tuple[dict, list]:
    """One table row (task scores in %, and their average) and its tidy records, from harness results."""
    row, tidy = {"model": model, "variant": name}, []
    for task in tasks:
        metrics = results[task]
        metric = primary_metric(task, metrics)
        scale = 100 if is_accuracy(metric) else 1  # accuracies in %, bits per byte as they are
        row[f"{task} ({metric})"] = scale * metrics[f"{metric},none"]
        tidy.append({"model": model, "variant": variant, "task": task, "metric": metric,
                     "value": metrics[f"{metric},none"], "stderr": metrics.get(f"{metric}_stderr,none")})
        if task == "lambada_openai":
            row["lambada_openai (ppl)"] = metrics["perplexity,none"]
            tidy.append({"model": model, "variant": variant, "task": task, "metric": "perplexity",
                         "value": metrics["perplexity,none"], "stderr": metrics.get("perplexity_stderr,none")})
    accuracies = [v for k, v in row.items() if k.endswith(("acc)", "acc_norm)"))]
    row["average"] = sum(accuracies) / len(accuracies)
    return row, tidy


def difference_row(model: str, name: str, variant: str, base_dir: Path, other_dir: Path, tasks: list[str],
                   base_results: dict) -> tuple[dict, list]:
    """other - base per task (paired per-document mean ± standard error) and on the average."""
    row, tidy, means, errors = {"model": model, "variant": name}, [], [], []
    for task in tasks:
        metric = primary_metric(task, base_results[task])
        mean, se, n = paired_difference(base_dir, other_dir, task, metric)
        tidy.append({"model": model, "variant": variant, "task": task, "metric": metric, "value": mean,
                     "stderr": se, "n_docs": n})
        if not is_accuracy(metric):  # bits per byte: the paired difference and the relative gap, not averaged
            gap = relative_bpb_gap(base_dir, other_dir, task)
            row[f"{task} ({metric})"] = f"{mean:+.3f} ± {se:.3f} ({100 * gap:+.1f}%)"
            tidy.append({"model": model, "variant": variant, "task": task, "metric": "bits_per_byte_relative_gap",
                         "value": gap, "stderr": None, "n_docs": n})
            continue
        row[f"{task} ({metric})"] = f"{100 * mean:+.1f} ± {100 * se:.1f}"
        means.append(mean)
        errors.append(se)
    if "lambada_openai" in tasks:
        row["lambada_openai (ppl)"] = ""
    avg, avg_se = sum(means) / len(means), math.sqrt(sum(e * e for e in errors)) / len(errors)
    row["average"] = f"{100 * avg:+.2f} ± {100 * avg_se:.2f}"
    tidy.append({"model": model, "variant": variant, "task": "average", "metric": "accuracy",
                 "value": avg, "stderr": avg_se})
    return row, tidy
