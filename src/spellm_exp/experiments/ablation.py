"""The quality ablation's runs: where a SpeLLM loses downstream accuracy, and what each head type wins back.

Scores, on the same documents and with the same harness code: the teacher; the ceilings, built from the
teacher's own distribution with no training (`teacher_marginals`: perfect independent heads, so what the
factorisation alone costs; `teacher_mixture_M`: what a mixture of M products could reach; for each
shortlist variant, `teacher_shortlist` and `teacher_shortlist_weights` with its own shortlist); and one
SpeLLM per variant of the config (head types in `conf/ablation.yaml`, training variants in
`conf/ablation_training.yaml`), each reused, resumed or distilled. reporting.ablation turns them into
results/<table_name>.{md,csv}.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from spellm_exp.core.ceilings import SHORTLIST_SOURCES, TEACHER_SHORTLIST, is_ceiling
from spellm_exp.core.heads import ShortlistHeads, heads_label
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.run import evaluate_or_reuse
from spellm_exp.experiments.runs import trained_run
from spellm_exp.teachers import load_teacher

EVAL_DIR = Path("eval") / "ablation"  # inside each run folder


def training_metrics(run_dir: Path, spellm: SpeLLM) -> dict:
    """What the run's summary says about the distillation (steps, time, final validation metrics), and the
    output layer's size next to the teacher's |V| d."""
    summary = json.loads((run_dir / "summary.json").read_text())
    val = summary["val"]
    info = spellm.info
    return {"heads": heads_label(spellm.heads.settings()), "trainable": summary["trainable"], "steps": summary["steps"],
            "train minutes": round(summary["seconds"] / 60, 1),
            "objective": summary.get("heads", {}).get("loss_objective", "marginal"),
            "val KL": val.get("val/kl"), "val token KL": val.get("val/token_kl"),
            "its ceiling's val token KL": val.get("val/ceiling_token_kl"),
            "agree teacher": val.get("val/agree_teacher"),
            "agree teacher (chars)": val.get("val/agree_teacher_chars"),
            "val token KL by step": token_kl_curve(run_dir),
            "output params": spellm.heads.num_parameters(),
            "output params / |V|d": spellm.heads.num_parameters() / (info.vocab_size * info.hidden_size),
            "decode FLOPs / 2|V|d": spellm.heads.decode_flops() / (2 * info.vocab_size * info.hidden_size)}


def token_kl_curve(run_dir: Path) -> str:
    """The validation token-level KL at every validation of the run, from its CSV log: "step: nats / ..."
    (the last value logged at a step, as a resumed run logs some steps twice); empty without a log."""
    log_file = run_dir / "csv" / "metrics.csv"
    if not log_file.exists():
        return ""
    log = pd.read_csv(log_file)
    if "val/token_kl" not in log:
        return ""
    curve = log.dropna(subset=["val/token_kl"]).groupby("step")["val/token_kl"].last()
    return " / ".join(f"{step + 1}: {value:.2f}" for step, value in curve.items())


def check_ceilings(ceilings: list[str], variant_ceilings: list[str]) -> None:
    """Fails, before any training, on a ceiling name the ablation cannot score."""
    for name in ceilings:
        if name in SHORTLIST_SOURCES or not is_ceiling(name):  # is_ceiling raises on teacher_mixture_1
            raise ValueError(f"ceilings: {name} is not a teacher ceiling; use teacher_marginals or "
                             f"teacher_mixture_M (M >= 2){' (put it in variant_ceilings)' if name in SHORTLIST_SOURCES else ''}.")
    for name in variant_ceilings:
        if name not in SHORTLIST_SOURCES:
            raise ValueError(f"variant_ceilings: {name} is unknown; use {' or '.join(SHORTLIST_SOURCES)}.")


def evaluate_variants(cfg: DictConfig, tasks: list[str], config: dict) -> tuple[str, str, dict]:
    """(teacher description, SpeLLM label, {row name: (evaluation folder, training metrics when it trained)})."""
    check_ceilings(list(cfg.ceilings), list(cfg.variant_ceilings))
    common = dict(batch_size=cfg.batch_size, score=cfg.score)

    def scored(lm: SpeLLMHarnessLM, out_dir: Path) -> Path:  # a finished evaluation with the same settings is reused
        evaluate_or_reuse(lm, tasks, out_dir, cfg.num_fewshot, cfg.limit, config=config)
        return out_dir

    # a variant without overrides is Table 1's SpeLLM: the same run folder
    run_dirs = {name: trained_run(cfg.experiment, cfg.train_profile, cfg.paths.output_dir, cfg.paths.cache_dir,
                                  tuple(overrides), f"_{name}" if overrides else "")
                for name, overrides in cfg.variants.items()}
    first = next(iter(run_dirs.values()))
    spellm = SpeLLM.load(first / "spellm", cache_dir=cfg.paths.cache_dir)
    teacher = load_teacher(spellm.teacher_config)
    model = teacher.info.description
    label = f"k={spellm.k}, {spellm.alphabet.label}"
    ceiling_model = SpeLLM(teacher, spellm.spelling, spellm.heads)  # the untouched teacher (heads unused)
    rows = {"teacher": (scored(SpeLLMHarnessLM(variant="teacher", teacher=teacher, **common),
                               first / EVAL_DIR / "teacher"), {})}
    for ceiling in cfg.ceilings:
        rows[ceiling] = (scored(SpeLLMHarnessLM(variant=ceiling, spellm=ceiling_model, **common),
                                first / EVAL_DIR / ceiling), {})
        for mode in cfg.ceiling_scores if ceiling == cfg.ceilings[0] else ():
            lm = SpeLLMHarnessLM(variant=ceiling, spellm=ceiling_model, batch_size=cfg.batch_size, score=mode)
            rows[f"{ceiling}, score={mode}"] = (scored(lm, first / EVAL_DIR / f"{ceiling}-{mode}"), {})
    del spellm, teacher, ceiling_model
    shared_ceilings: dict[tuple, Path] = {}
    for position, (name, run_dir) in enumerate(run_dirs.items()):
        spellm = SpeLLM.load(run_dir / "spellm", cache_dir=cfg.paths.cache_dir)
        lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, **common)
        overrides = {"overrides": " ".join(cfg.variants[name]) or "-"}
        for ceiling in cfg.variant_ceilings if isinstance(spellm.heads, ShortlistHeads) else ():
            # teacher_shortlist depends only on the shortlist's tokens, how its rest spreads (rest_outside) and
            # whether seen tokens are exact (context_tokens): a variant that shares them (one trained on top of
            # another, train.init_from) reuses that evaluation
            shortlist = (tuple(spellm.heads.token_ids.tolist()), spellm.heads.rest_outside,
                         spellm.heads.context_tokens)
            key = (ceiling, shortlist if ceiling == TEACHER_SHORTLIST else name)
            if key not in shared_ceilings:
                lm_ceiling = SpeLLMHarnessLM(variant=ceiling, spellm=spellm, **common)
                shared_ceilings[key] = scored(lm_ceiling, run_dir / EVAL_DIR / ceiling)
            rows[f"{ceiling} ({name})"] = (shared_ceilings[key], {})
        rows[f"spellm {name}"] = (scored(lm, run_dir / EVAL_DIR / "spellm"),
                                  {**overrides, **training_metrics(run_dir, spellm)})
        for mode in cfg.other_scores if position == 0 else ():  # the scoring options, on the first variant's heads
            lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, batch_size=cfg.batch_size, score=mode)
            rows[f"spellm {name}, score={mode}"] = (scored(lm, run_dir / EVAL_DIR / f"spellm-{mode}"), {})
    return model, label, rows
