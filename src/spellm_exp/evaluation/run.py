"""An evaluation run: the harness on a SpeLLM or a teacher, written as results.json (the harness's own),
samples.jsonl (per-document scores) and metrics.csv, with provenance; or read back when it was already
written with the same settings."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import lm_eval
import pandas as pd
from lm_eval.tasks import TaskManager
from omegaconf import DictConfig

from spellm_exp.config import model_config
from spellm_exp.evaluation.harness import SpeLLMEvalError, SpeLLMHarnessLM
from spellm_exp.evaluation.tasks import write_task_yamls
from spellm_exp.provenance import provenance
from spellm_exp.teachers import load_teacher

log = logging.getLogger(__name__)


def flat_metrics(results: dict) -> pd.DataFrame:
    """The harness's results as rows of (task, metric, value, stderr)."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in key or key == "alias":
                continue
            metric, _, filter_name = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append({"task": task, "metric": metric, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None})
    return pd.DataFrame(rows)


def evaluate_lm(lm: SpeLLMHarnessLM, tasks: list[str], out_dir: Path, num_fewshot: int = 0,
                limit: int | None = None, config: dict | None = None) -> dict:
    """Run the harness on `tasks` and write results.json, samples.jsonl, metrics.csv into `out_dir`."""
    started = provenance(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    task_manager = TaskManager(include_path=str(write_task_yamls(out_dir / "tasks", tasks)), include_defaults=False)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, num_fewshot=num_fewshot,
                                      limit=limit, log_samples=True, bootstrap_iters=1000)
    samples = results.pop("samples")
    with (out_dir / "samples.jsonl").open("w") as out:
        for task, docs in samples.items():
            for doc in docs:
                out.write(json.dumps({"task": task, "doc_id": doc["doc_id"], **_per_doc_scores(doc)}) + "\n")
    results["spellm_exp"] = {"variant": lm.variant, "segmentation_failures": lm.failures,
                             "provenance": started}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    flat_metrics(results).to_csv(out_dir / "metrics.csv", index=False)
    log.info("wrote %s", out_dir)
    return results


def _per_doc_scores(doc: dict) -> dict:
    """What paired comparisons need of one document: its accuracies, or for a likelihood task (lm-eval's
    wikitext metrics) its log-likelihood and UTF-8 bytes."""
    scores = {k: doc[k] for k in ("acc", "acc_norm") if k in doc}
    if "bits_per_byte" in doc:
        scores["loglikelihood"], scores["bytes"] = doc["bits_per_byte"]
    return scores


def evaluate_or_reuse(lm: SpeLLMHarnessLM, tasks: list[str], out_dir: Path, num_fewshot: int, limit: int | None,
                      identity: dict | None = None, config: dict | None = None) -> dict:
    """The harness's results in `out_dir`: read back when they were written with the same settings (limit,
    shots, scoring mode, and `identity`: whatever else decides the scores, such as the model and the code;
    kept in their provenance next to `config`), else evaluated now. Tasks the folder lacks are evaluated and
    added to it, so adding a task to a table scores only that task."""
    settings = evaluation_settings(tasks, limit, num_fewshot, lm.score_mode, identity)
    done = out_dir / "results.json"
    stored = json.loads(done.read_text()) if done.exists() else None
    stored_settings = _settings_of(stored) if stored else {}
    if stored is None or not _same_settings(stored_settings, settings):
        return evaluate_lm(lm, tasks, out_dir, num_fewshot, limit, {**(config or {}), "settings": settings})["results"]
    missing = [task for task in tasks if task not in stored_settings["tasks"]]
    if not missing:
        log.info("reusing %s", out_dir)
        return stored["results"]
    log.info("adding %s to %s", missing, out_dir)
    added_dir = out_dir / "added"
    added = evaluate_lm(lm, missing, added_dir, num_fewshot, limit,
                        {**(config or {}), "settings": {**settings, "tasks": missing}})
    return _merge_into(out_dir, stored, added, added_dir, missing)


def evaluation_settings(tasks: list[str], limit: int | None, num_fewshot: int, score: str,
                        identity: dict | None = None) -> dict:
    """What decides an evaluation's scores: its tasks, documents, shots, scoring mode and `identity` (the model,
    its variant, the run's overrides)."""
    return {"tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot, "score": score, **(identity or {})}


def _settings_of(stored: dict) -> dict:
    return stored["spellm_exp"]["provenance"]["config"].get("settings", {})


def _same_settings(stored: dict, settings: dict) -> bool:
    """The same settings but perhaps other tasks."""
    return {**stored, "tasks": None} == {**settings, "tasks": None}


# what a table needs of an evaluation: its metrics and our block (provenance, settings, failures, the row's labels)
_ARCHIVED_KEYS = ("results", "n-samples", "n-shot", "versions", "higher_is_better", "spellm_exp")


def archive_evaluation(eval_dir: Path, archive_dir: Path, row: dict) -> None:
    """Copy an evaluation's metrics, per-document scores and provenance, plus `row` (the labels a table gives it),
    into `archive_dir` under results/, so that a table can be rebuilt, and its paired differences checked,
    without the run that wrote it."""
    stored = json.loads((eval_dir / "results.json").read_text())
    kept = {key: stored[key] for key in _ARCHIVED_KEYS if key in stored}
    kept["spellm_exp"] = {**kept["spellm_exp"], "row": row}
    archive_dir.mkdir(parents=True, exist_ok=True)
    (archive_dir / "results.json").write_text(json.dumps(kept, indent=2, default=str) + "\n")
    shutil.copyfile(eval_dir / "samples.jsonl", archive_dir / "samples.jsonl")


def archived_evaluation(archive_dir: Path, settings: dict) -> dict | None:
    """The archived evaluation in `archive_dir` (its results.json) when it was written with `settings` and holds
    all of their tasks; None otherwise."""
    done = archive_dir / "results.json"
    if not done.exists():
        return None
    stored = json.loads(done.read_text())
    stored_settings = _settings_of(stored)
    if not _same_settings(stored_settings, settings) or not set(settings["tasks"]) <= set(stored_settings["tasks"]):
        return None
    return stored


def _merge_into(out_dir: Path, stored: dict, added: dict, added_dir: Path, missing: list[str]) -> dict:
    """`added` (an evaluation of the `missing` tasks in `added_dir`) folded into the stored one in `out_dir`."""
    for key in ("results", "configs", "versions", "n-shot", "higher_is_better", "n-samples"):
        if isinstance(stored.get(key), dict) and isinstance(added.get(key), dict):
            stored[key].update(added[key])
    ours = stored["spellm_exp"]
    ours["provenance"]["config"]["settings"]["tasks"] += missing
    ours["segmentation_failures"] += added["spellm_exp"]["segmentation_failures"]
    ours.setdefault("added", []).append({"tasks": missing, "provenance": added["spellm_exp"]["provenance"]})
    with (out_dir / "samples.jsonl").open("a") as out:
        out.write((added_dir / "samples.jsonl").read_text())
    (out_dir / "results.json").write_text(json.dumps(stored, indent=2, default=str))
    flat_metrics(stored).to_csv(out_dir / "metrics.csv", index=False)
    shutil.rmtree(added_dir)
    return stored["results"]


def build_lm(cfg: DictConfig) -> SpeLLMHarnessLM:
    """The harness model of conf/eval.yaml: a training run's SpeLLM (or its teacher), or a teacher by name."""
    common = dict(batch_size=cfg.batch_size, score=cfg.score, decode_mode=cfg.decode.mode,
                  decode_backend=cfg.decode.backend, decode_compiler=cfg.decode.compiler,
                  cache_dir=cfg.paths.cache_dir)
    if cfg.run_dir:
        return SpeLLMHarnessLM(checkpoint=cfg.run_dir, variant=cfg.variant, **common)
    if cfg.variant != "teacher":
        raise SpeLLMEvalError("variant=spellm needs run_dir=<training run or SpeLLM checkpoint folder>.")
    return SpeLLMHarnessLM(variant="teacher", teacher=load_teacher(model_config(cfg)), **common)
