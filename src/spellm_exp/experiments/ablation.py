"""The quality ablation's runs (issue 6's investigation): where a SpeLLM loses downstream accuracy.

Scores, on the same documents and with the same harness code: the teacher; the product of the
teacher's own per-head marginals (perfect heads, so what the factorisation alone costs); and one
SpeLLM per training variant of `conf/ablation.yaml`, each reused, resumed or distilled.
reporting.ablation turns them into results/quality_ablation.{md,csv}.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from spellm_exp.core.spellm import SpeLLM
from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.run import evaluate_or_reuse
from spellm_exp.experiments.runs import trained_run
from spellm_exp.teachers import load_teacher

EVAL_DIR = Path("eval") / "ablation"  # inside each run folder


def training_metrics(run_dir: Path) -> dict:
    """What the run's summary says about the distillation: steps, time, final validation metrics."""
    summary = json.loads((run_dir / "summary.json").read_text())
    val = summary["val"]
    return {"trainable": summary["trainable"], "steps": summary["steps"],
            "train minutes": round(summary["seconds"] / 60, 1), "val KL": val.get("val/kl"),
            "agree teacher": val.get("val/agree_teacher"),
            "agree teacher (chars)": val.get("val/agree_teacher_chars")}


def evaluate_variants(cfg: DictConfig, tasks: list[str], config: dict) -> tuple[str, str, dict]:
    """(teacher description, SpeLLM label, {row name: (evaluation folder, training metrics when it trained)})."""
    common = dict(batch_size=cfg.batch_size, score=cfg.score)

    def scored(lm: SpeLLMHarnessLM, out_dir: Path) -> Path:  # a finished evaluation with the same settings is reused
        evaluate_or_reuse(lm, tasks, out_dir, cfg.num_fewshot, cfg.limit, config=config)
        return out_dir

    run_dirs = {name: trained_run(cfg.experiment, cfg.train_profile, cfg.paths.output_dir, cfg.paths.cache_dir,
                                  tuple(overrides), "" if name == "heads" and not overrides else f"_{name}")
                for name, overrides in cfg.variants.items()}
    first = next(iter(run_dirs.values()))
    spellm = SpeLLM.load(first / "spellm", cache_dir=cfg.paths.cache_dir)
    teacher = load_teacher(spellm.teacher_config)
    model = teacher.info.description
    label = f"k={spellm.k}, {spellm.alphabet.kind.value}-{len(spellm.alphabet.units)}"
    perfect_heads = SpeLLM(teacher, spellm.spelling, spellm.heads)  # the untouched teacher's marginals
    rows = {"teacher": (scored(SpeLLMHarnessLM(variant="teacher", teacher=teacher, **common),
                               first / EVAL_DIR / "teacher"), {}),
            "teacher_marginals": (scored(SpeLLMHarnessLM(variant="teacher_marginals", spellm=perfect_heads, **common),
                                         first / EVAL_DIR / "teacher_marginals"), {})}
    del spellm, teacher, perfect_heads
    for name, run_dir in run_dirs.items():
        spellm = SpeLLM.load(run_dir / "spellm", cache_dir=cfg.paths.cache_dir)
        lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, **common)
        overrides = {"overrides": " ".join(cfg.variants[name]) or "-"}
        rows[f"spellm {name}"] = (scored(lm, run_dir / EVAL_DIR / "spellm"), {**overrides, **training_metrics(run_dir)})
        for mode in cfg.other_scores if name == "heads" else ():  # the scoring options, on the same heads
            lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, batch_size=cfg.batch_size, score=mode)
            rows[f"spellm heads, score={mode}"] = (scored(lm, run_dir / EVAL_DIR / f"spellm-{mode}"), {})
    return model, label, rows
