"""python -m spellm_exp.ablation: where a SpeLLM loses downstream accuracy (issue 6's investigation).

Scores, on the same documents and with the same harness code: the teacher; the product of the
teacher's own per-head marginals (perfect heads, so what the factorisation alone costs); and one
SpeLLM per training variant of `conf/ablation.yaml`. Writes results/quality_ablation.{md,csv}
with each row's paired difference to the teacher and each SpeLLM's training metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import CONFIG_PATH
from spellm_exp.eval.harness import SpeLLMHarnessLM
from spellm_exp.eval.tasks import check_tasks
from spellm_exp.evaluate import evaluate_or_reuse
from spellm_exp.model import SpeLLM
from spellm_exp.models import load_teacher
from spellm_exp.provenance import provenance
from spellm_exp.results import write_table
from spellm_exp.table1 import accuracy_row, difference_row, harness_results, trained_run

EVAL_DIR = Path("eval") / "ablation"  # inside each run folder


def training_metrics(run_dir: Path) -> dict:
    """What the run's summary says about the distillation: steps, time, final validation metrics."""
    summary = json.loads((run_dir / "summary.json").read_text())
    val = summary["val"]
    return {"trainable": summary["trainable"], "steps": summary["steps"],
            "train minutes": round(summary["seconds"] / 60, 1), "val KL": val.get("val/kl"),
            "agree teacher": val.get("val/agree_teacher"),
            "agree teacher (chars)": val.get("val/agree_teacher_chars")}


def evaluated(lm: SpeLLMHarnessLM, out_dir: Path, cfg: DictConfig, tasks: list[str], config: dict) -> Path:
    """`out_dir` with the harness's results for `tasks`, re-using a finished evaluation with the same settings."""
    settings = {"tasks": tasks, "limit": cfg.limit, "num_fewshot": cfg.num_fewshot, "score": lm.score_mode}
    evaluate_or_reuse(lm, tasks, out_dir, cfg.num_fewshot, cfg.limit, settings, config)
    return out_dir


def run(cfg: DictConfig, command: str) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    started = provenance(config)
    tasks = check_tasks(list(cfg.tasks))
    common = dict(batch_size=cfg.batch_size, score=cfg.score)
    run_dirs = {name: trained_run(cfg.experiment, cfg.train_profile, cfg.paths.output_dir, cfg.paths.cache_dir,
                                  tuple(overrides), "" if name == "heads" and not overrides else f"_{name}")
                for name, overrides in cfg.variants.items()}
    first = next(iter(run_dirs.values()))
    spellm = SpeLLM.load(first / "spellm", cache_dir=cfg.paths.cache_dir)
    teacher = load_teacher(spellm.teacher_config)
    model = teacher.info.description
    label = f"k={spellm.k}, {spellm.alphabet.kind.value}-{len(spellm.alphabet.units)}"
    perfect_heads = SpeLLM(teacher, spellm.spelling, spellm.heads)  # the untouched teacher's marginals
    teacher_dir = evaluated(SpeLLMHarnessLM(variant="teacher", teacher=teacher, **common),
                            first / EVAL_DIR / "teacher", cfg, tasks, config)
    rows = {"teacher": (teacher_dir, {}),  # row name -> (evaluation folder, training metrics when it trained)
            "teacher_marginals": (evaluated(SpeLLMHarnessLM(variant="teacher_marginals", spellm=perfect_heads,
                                                            **common),
                                            first / EVAL_DIR / "teacher_marginals", cfg, tasks, config), {})}
    del spellm, teacher, perfect_heads
    for name, run_dir in run_dirs.items():
        spellm = SpeLLM.load(run_dir / "spellm", cache_dir=cfg.paths.cache_dir)
        lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, **common)
        overrides = {"overrides": " ".join(cfg.variants[name]) or "-"}
        rows[f"spellm {name}"] = (evaluated(lm, run_dir / EVAL_DIR / "spellm", cfg, tasks, config),
                                  {**overrides, **training_metrics(run_dir)})
        for mode in cfg.other_scores if name == "heads" else ():  # the scoring options, on the same heads
            lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, batch_size=cfg.batch_size, score=mode)
            rows[f"spellm heads, score={mode}"] = (
                evaluated(lm, run_dir / EVAL_DIR / f"spellm-{mode}", cfg, tasks, config), {})

    teacher_results = harness_results(teacher_dir)
    accuracy, differences, training, tidy = [], [], [], []
    for name, (eval_dir, train_metrics) in rows.items():
        row, records = accuracy_row(model, name, name, harness_results(eval_dir), tasks)
        accuracy.append(row)
        tidy += records
        if name != "teacher":
            diff, records = difference_row(model, name, f"{name} - teacher", teacher_dir, eval_dir, tasks,
                                           teacher_results)
            differences.append(diff)
            tidy += records
        if train_metrics:
            training.append({"variant": name, **train_metrics})
    notes = [
        f"Teacher {model}; SpeLLMs from `experiment={cfg.experiment}` ({label}), `{cfg.train_profile}` training profile "
        f"plus each variant's overrides; the first {cfg.limit} documents of each task, {cfg.num_fewshot}-shot, "
        f"`score={cfg.score}`.",
        "`teacher_marginals` scores with the product of the teacher's own per-head marginals q_i (perfect heads): "
        "the gap from the teacher to it is what the factorisation costs; the gap from it to a SpeLLM is what "
        "the heads (or adapters) failed to learn.",
        "Differences: mean of the paired per-document differences to the teacher ± standard error.",
        "Training metrics are the last validation of each run (`agree teacher (chars)`: top-1 agreement with "
        "the teacher's marginals over every (position, head) where the teacher's top symbol is a character, "
        "pooled over the validation blocks; empty for runs written before that metric existed).",
    ]
    sections = [("Accuracy (%)", pd.DataFrame(accuracy)), ("Difference to the teacher (points)",
                                                          pd.DataFrame(differences)),
                ("Training", pd.DataFrame(training))]
    write_table(cfg.paths.results_dir, "quality_ablation", "Quality ablation: where a SpeLLM loses accuracy",
                command, pd.DataFrame(tidy), sections, notes, started)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="ablation")
def main(cfg: DictConfig) -> None:
    run(cfg, ("python -m spellm_exp.ablation " + " ".join(sys.argv[1:])).strip())


if __name__ == "__main__":
    main()
