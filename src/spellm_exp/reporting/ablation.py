"""The quality-ablation table (results/quality_ablation.{md,csv}): every row's accuracy, its paired difference
to the teacher on the same documents, and each SpeLLM's training metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.evaluation.metrics import harness_results
from spellm_exp.evaluation.tasks import check_tasks
from spellm_exp.experiments.ablation import evaluate_variants
from spellm_exp.provenance import provenance
from spellm_exp.reporting.quality import accuracy_row, difference_row
from spellm_exp.reporting.tables import write_table


def write_ablation_table(cfg: DictConfig, command: str) -> list[Path]:
    """Distil or reuse each variant, score every row, and write the table."""
    config = OmegaConf.to_container(cfg, resolve=True)
    started = provenance(config)
    tasks = check_tasks(list(cfg.tasks))
    model, label, rows = evaluate_variants(cfg, tasks, config)
    teacher_dir = rows["teacher"][0]
    teacher_results = harness_results(teacher_dir)
    accuracy, differences, training, tidy = [], [], [], []
    for name, (eval_dir, train_metrics) in rows.items():
        head_type = {"head_type": train_metrics["heads"]} if train_metrics else {}  # the SpeLLM rows
        row, records = accuracy_row(model, name, name, harness_results(eval_dir), tasks)
        accuracy.append(row)
        tidy += [{**record, **head_type} for record in records]
        if name != "teacher":
            diff, records = difference_row(model, name, f"{name} - teacher", teacher_dir, eval_dir, tasks,
                                           teacher_results)
            differences.append(diff)
            tidy += [{**record, **head_type} for record in records]
        if train_metrics:
            training.append({"variant": name, **train_metrics})
    notes = [
        f"Teacher {model}; SpeLLMs from `experiment={cfg.experiment}` ({label}), `{cfg.train_profile}` training profile "
        f"plus each variant's overrides; the first {cfg.limit} documents of each task, {cfg.num_fewshot}-shot, "
        f"`score={cfg.score}`.",
        "`teacher_marginals` scores with the product of the teacher's own per-head marginals q_i (perfect heads): "
        "the gap from the teacher to it is what the factorisation costs; the gap from it to a SpeLLM is what "
        "the heads (or adapters) failed to learn. `teacher_mixture_M` (no training either): the teacher's top "
        "M-1 spellable tokens spelled exactly, weighted by their probabilities, plus one product of the marginals "
        "of the rest of its mass: the ceiling of `heads=mixture` with M components. `teacher_shortlist (v)`: the "
        "teacher's probabilities of variant v's shortlist tokens exactly, plus its rest mass spelled by the product "
        "of the rest's marginals (the ceiling of that shortlist); `teacher_shortlist_weights (v)`: the teacher's "
        "shortlist and rest weights with v's trained rest heads (from it to the ceiling: what the rest heads lose; "
        "from v to it: what v's shortlist logits and gate lose). `score=vocab_normalized` "
        "renormalises over the vocabulary's spellings.",
        "Differences: mean of the paired per-document differences to the teacher ± standard error.",
        "Training metrics are the last validation of each run (`agree teacher (chars)`: top-1 agreement with "
        "the teacher's marginals over every (position, head) where the teacher's top symbol is a character, "
        "pooled over the validation blocks; empty for runs written before that metric existed). `val KL` is "
        "the objective's: the mean over heads of the marginal KL, or the token-level KL(q || p) over the "
        "teacher's vocabulary (`val token KL`, comparable across head types), next to the same KL of the head "
        "type's ceiling on the same validation positions (the product of the teacher's marginals for linear and "
        "mlp, `teacher_mixture_M` for a mixture; the autoregressive type's is 0; empty for runs written before "
        "that metric existed). Output params and decode FLOPs "
        "are per position, as shares of the teacher's output layer (|V| d weights, 2 |V| d FLOPs).",
    ]
    sections = [("Accuracy (%)", pd.DataFrame(accuracy)), ("Difference to the teacher (points)",
                                                          pd.DataFrame(differences)),
                ("Training", pd.DataFrame(training))]
    return write_table(cfg.paths.results_dir, cfg.table_name, "Quality ablation: where a SpeLLM loses accuracy",
                       command, pd.DataFrame(tidy), sections, notes, started)
