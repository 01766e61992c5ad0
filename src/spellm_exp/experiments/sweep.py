"""The jobs of a Table 3 sweep (`python -m spellm_exp.sweep -m experiment=table3`).

Each job, in its own folder of the sweep (Hydra's multirun subfolder, named after its overrides):
1. distils a SpeLLM as train.yaml says (`summary.json`, `spellm/`, `csv/`), resuming an interrupted run;
2. scores it on `sweep.eval.tasks` with the harness (`eval/`); the teacher is scored once per sweep, in
   `sweep.teacher_eval_dir`, by the same code;
3. times its decode step against the teacher's in the same loop (`bench.json`, benchmarks.decode);
4. writes `job.json`: the job's fingerprint (its config and the code), its metrics and status.

A re-run skips a job whose `job.json` finished with the same fingerprint, goes on with an unfinished
one stage by stage, and starts over where the config or the code changed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spellm_exp.benchmarks.decode import bench_checkpoint
from spellm_exp.config import Trainable
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.metrics import average_accuracy, primary_metric
from spellm_exp.evaluation.run import evaluate_or_reuse
from spellm_exp.evaluation.tasks import UnknownTaskError, check_tasks
from spellm_exp.experiments.jobs import (
    BENCH_FILE,
    EVAL_FOLDER,
    job_fingerprint,
    read_job,
    start_over,
    write_job,
)
from spellm_exp.experiments.runs import reuse_resume_or_distil
from spellm_exp.provenance import code_version, provenance
from spellm_exp.training.distill import ConfigError, check_train_config
from spellm_exp.training.loggers import wandb_summary
from spellm_exp.training.module import DivergedError
from spellm_exp.training.run_folder import DIVERGED

log = logging.getLogger(__name__)


def evaluated(lm: SpeLLMHarnessLM, out_dir: Path, cfg: DictConfig) -> dict:
    """Harness results on the sweep's tasks, reused when written for the same model, settings and code."""
    identity = {"model": OmegaConf.to_container(cfg.model, resolve=True) | {"cache_dir": None},
                "code": code_version()}
    return evaluate_or_reuse(lm, check_tasks(list(cfg.sweep.eval.tasks)), out_dir, cfg.sweep.eval.num_fewshot,
                             cfg.sweep.eval.limit, identity)


def benched(cfg: DictConfig, job_dir: Path) -> dict:
    path = job_dir / BENCH_FILE
    if path.exists():
        return json.loads(path.read_text())
    record = bench_checkpoint(OmegaConf.to_container(cfg.sweep.bench, resolve=True), job_dir, cfg.model.name,
                              cfg.paths.cache_dir)
    path.write_text(json.dumps(record, indent=2, default=str))
    return record


def best_run_ratio(batch: dict) -> float:
    """SpeLLM / teacher step from each side's fastest timed run: interference on a shared machine only
    ever adds time, so the best run is the steadier estimate of what a step costs."""
    def best(side: str) -> float:
        return min(run["step_s"] for run in batch[side]["runs"])

    return best("spellm") / best("teacher")


def job_metrics(summary: dict, scores: dict, teacher: dict, bench: dict) -> dict:
    """A job's numbers from its training summary, harness scores (and the teacher's, on the same tasks) and
    bench record: job.json, the wandb summary and the job's Table 3 row."""
    tasks = sorted(scores)
    batch = bench["batches"][0]
    val = summary["val"]
    accuracy, teacher_accuracy = average_accuracy(scores, tasks), average_accuracy(teacher, tasks)
    return {"vocab_coverage": summary["coverage"]["vocab_coverage"],
            "corpus_coverage": summary["coverage"]["corpus_coverage"],
            "val_kl": val["val/kl"], "agree_teacher": val["val/agree_teacher"],
            # pooled over character positions; runs from before that metric existed have none
            "agree_teacher_chars": val.get("val/agree_teacher_chars", float("nan")),
            "non_vocab_share": batch["spellm"]["non_vocab_share"],
            "accuracy": accuracy, "teacher_accuracy": teacher_accuracy, "accuracy_diff": accuracy - teacher_accuracy,
            "step_ratio": batch["step_ratio"], "step_ratio_best": best_run_ratio(batch),
            "head_ms_teacher": batch["output_layer"]["teacher_ms"], "head_ms_spellm": batch["output_layer"]["spellm_ms"],
            "bound": bench["bound"]["ratio"], "batch": batch["batch_size"],
            **{f"acc {t}": scores[t][f"{primary_metric(t, scores[t])},none"] for t in tasks}}


def check_sweep_config(cfg: DictConfig) -> None:
    check_train_config(cfg)
    if cfg.train.trainable is not Trainable.heads:
        raise ConfigError(f"train.trainable={cfg.train.trainable.value}: a sweep job scores the frozen backbone as the "
                          f"teacher, so it needs train.trainable=heads.")
    if cfg.trainer.devices != 1 or cfg.trainer.num_nodes != 1:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices}, trainer.num_nodes={cfg.trainer.num_nodes}: a sweep "
                          "job trains, scores and times its SpeLLM in one process, on one device; use "
                          "trainer.devices=1 (spellm_exp.train runs single multi-device distillations).")
    try:
        check_tasks(list(cfg.sweep.eval.tasks))
    except UnknownTaskError as err:
        raise ConfigError(str(err)) from err


def run_job(cfg: DictConfig, job_dir: Path) -> dict:
    """Run (or skip, or finish) one sweep job in `job_dir`; returns its job.json record."""
    check_sweep_config(cfg)
    fingerprint = job_fingerprint(cfg)
    previous = read_job(job_dir)
    if previous is not None and previous["fingerprint"] == fingerprint and previous["status"] == "done":
        log.info("skipping %s: finished with the same config and code", job_dir)
        return previous
    if previous is not None and previous["fingerprint"] != fingerprint:
        log.info("%s: config or code changed since its last run; starting over", job_dir)
        start_over(job_dir)
    started = provenance(fingerprint["config"])
    write_job(job_dir, {"status": "running", "fingerprint": fingerprint, "provenance": started})

    try:
        summary = reuse_resume_or_distil(cfg, job_dir)
    except DivergedError as err:  # a result that must not enter Table 3; the sweep's other jobs go on
        log.error("%s: %s", job_dir.name, err)
        record = {"status": DIVERGED, "fingerprint": fingerprint, "provenance": started, "error": str(err)}
        write_job(job_dir, record)
        return record
    spellm = SpeLLM.load(job_dir / "spellm", cache_dir=cfg.paths.cache_dir)
    common = dict(batch_size=cfg.sweep.eval.batch_size, score=cfg.sweep.eval.score)
    teacher = evaluated(SpeLLMHarnessLM(variant="teacher", spellm=spellm, **common), Path(cfg.sweep.teacher_eval_dir),
                        cfg)
    scores = evaluated(SpeLLMHarnessLM(variant="spellm", spellm=spellm, **common), job_dir / EVAL_FOLDER, cfg)
    del spellm
    bench = benched(cfg, job_dir)

    metrics = job_metrics(summary, scores, teacher, bench)
    record = {"status": "done", "fingerprint": fingerprint, "provenance": started, "metrics": metrics}
    write_job(job_dir, record)
    wandb_summary(metrics)
    return record
