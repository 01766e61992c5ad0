"""The method end to end in minutes (`python -m spellm_exp.quickstart`, `make quickstart`): distil a head type of
Table 1 for a few steps, score the SpeLLM and its teacher on a few documents with the same harness code, and time
a few decode steps of both in the one decode loop. Smoke figures, not results: the tables are the reproduce targets.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from spellm_exp.benchmarks.decode import bench_checkpoint
from spellm_exp.config import compose_config
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.metrics import average_accuracy
from spellm_exp.evaluation.run import evaluate_lm
from spellm_exp.evaluation.tasks import check_tasks
from spellm_exp.provenance import provenance
from spellm_exp.training.distill import ConfigError, distil

log = logging.getLogger(__name__)
RECORD_FILE = "quickstart.json"


def head_type_overrides(name: str) -> list[str]:
    """The train overrides of Table 1's head type `name` (conf/table1.yaml's head_types): one definition, used
    here by name rather than copied."""
    head_types = compose_config("table1").head_types
    if name not in head_types:
        raise ConfigError(f"head_type={name} is not one of conf/table1.yaml's head types: {list(head_types)}.")
    return list(head_types[name])


def train_config(cfg: DictConfig) -> DictConfig:
    overrides = [f"experiment={cfg.experiment}", *head_type_overrides(cfg.head_type), *cfg.train_overrides,
                 f"paths.cache_dir={cfg.paths.cache_dir}", f"paths.output_dir={cfg.paths.output_dir}",
                 f"paths.features_dir={cfg.paths.features_dir}", "trainer.enable_progress_bar=false"]
    return compose_config("train", overrides)


def run_quickstart(cfg: DictConfig, run_dir: Path) -> dict:
    """Distil (into `run_dir`/train), score (eval/) and time (bench.json) in `run_dir`; returns (and writes, as
    quickstart.json) the smoke figures."""
    tasks = check_tasks(list(cfg.tasks))
    train = train_config(cfg)  # distil checks it before the teacher loads
    started = provenance(OmegaConf.to_container(cfg, resolve=True))
    train_dir = run_dir / "train"  # a run folder of its own (training.run_folder)
    summary = distil(train, train_dir)
    spellm = SpeLLM.load(train_dir / "spellm", cache_dir=cfg.paths.cache_dir)
    scores = {}
    for variant in ("teacher", "spellm"):
        lm = SpeLLMHarnessLM(variant=variant, spellm=spellm, batch_size=cfg.batch_size)
        scores[variant] = evaluate_lm(lm, tasks, run_dir / "eval" / variant, 0, cfg.limit)["results"]
    del spellm
    bench = bench_checkpoint(OmegaConf.to_container(cfg.bench, resolve=True), train_dir, train.model.name,
                             cfg.paths.cache_dir)
    (run_dir / "bench.json").write_text(json.dumps(bench, indent=2, default=str))
    batch = bench["batches"][0]
    record = {
        "head_type": cfg.head_type, "teacher": summary["teacher"]["description"], "steps": summary["steps"],
        "train_seconds": summary["seconds"], "documents_per_task": cfg.limit, "tasks": tasks,
        "accuracy_teacher_pct": 100 * average_accuracy(scores["teacher"], tasks),
        "accuracy_spellm_pct": 100 * average_accuracy(scores["spellm"], tasks),
        "step_ratio": batch["step_ratio"], "batch": batch["batch_size"], "provenance": started,
    }
    (run_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=str))
    log.info("%s on %s after %d steps: accuracy %.1f%% (teacher %.1f%%) on %d documents of %s; decode step %.3f of "
             "the teacher's at batch %d. Smoke figures; the tables: make reproduce.", cfg.head_type,
             record["teacher"], record["steps"], record["accuracy_spellm_pct"], record["accuracy_teacher_pct"], cfg.limit,
             ", ".join(tasks), record["step_ratio"], record["batch"])
    return record
