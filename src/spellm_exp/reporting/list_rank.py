"""results/list_rank.{md,csv}: the ceiling of a factored shortlist list (experiments/list_rank.py), per teacher."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import DataConfig, HeadKind
from spellm_exp.core.spellm import META_FILE, SpeLLM, checkpoint_folder, read_meta
from spellm_exp.data.datamodule import DistillDataModule
from spellm_exp.experiments.list_rank import FITS, ListScores, hidden_states, rank_rows
from spellm_exp.provenance import provenance
from spellm_exp.reporting.tables import write_table

log = logging.getLogger(__name__)


def shortlist_folder(name: str, checkpoint: str) -> Path:
    """The SpeLLM folder of `models.<name>.checkpoint`, checked to hold shortlist heads (before any model loads)."""
    folder = checkpoint_folder(checkpoint)
    if folder is None:
        raise ValueError(f"models.{name}.checkpoint={checkpoint}: no SpeLLM checkpoint there ({META_FILE} in it or "
                         "in its spellm/ folder); distil it first (make reproduce-table1) or point at another run.")
    kind = read_meta(folder).get("heads", {}).get("kind", HeadKind.linear.value)
    if kind != HeadKind.shortlist.value:
        raise ValueError(f"models.{name}.checkpoint={checkpoint}: its heads are '{kind}'; a list rank needs "
                         "heads=shortlist.")
    return folder


def model_rows(name: str, folder: Path, data: DataConfig, cfg: DictConfig) -> list[dict]:
    spellm = SpeLLM.load(folder, cache_dir=cfg.paths.cache_dir).eval()
    datamodule = DistillDataModule(spellm.tokenizer, data)
    datamodule.setup()
    fit_blocks = datamodule.train_blocks[-cfg.fit_blocks:]
    log.info("%s: hidden states of %d fit and %d test blocks", name, len(fit_blocks), len(datamodule.val_blocks))
    fit = hidden_states(spellm, fit_blocks, data.batch_size)
    test = hidden_states(spellm, datamodule.val_blocks, data.batch_size)
    scores = ListScores.of(spellm.heads)
    rows = rank_rows(scores, fit, test, list(cfg.exact_rows), list(cfg.ranks), cfg.refine_steps, cfg.refine_batch,
                     cfg.refine_lr)
    length, width = scores.weight.shape
    return [{"model": spellm.info.description, "checkpoint": str(folder), "list": length, "d": width,
             "fit_positions": fit.shape[0], "test_positions": test.shape[0], **row} for row in rows]


def write_list_rank_table(cfg: DictConfig, command: str) -> list[Path]:
    if not cfg.models or not cfg.ranks:
        raise ValueError("list_rank: give models.<name>.checkpoint and ranks=[...].")
    data = {name: OmegaConf.to_object(entry.data) for name, entry in cfg.models.items()}
    folders = {name: shortlist_folder(name, entry.checkpoint) for name, entry in cfg.models.items()}
    started = provenance(OmegaConf.to_container(cfg, resolve=True))
    frame = pd.DataFrame([row for name in cfg.models for row in model_rows(name, folders[name], data[name], cfg)])
    wide = frame.pivot_table(index=["model", "exact_rows", "rank", "list_bytes_ratio"], columns="fit",
                             values=["kl_mean", "top1_agreement"], sort=False)[[(m, f) for m in
                                                                                 ("kl_mean", "top1_agreement")
                                                                                 for f in FITS]]
    wide.columns = [f"{metric} ({fit})" for metric, fit in wide.columns]
    notes = [
        "Issue 16: a list whose rows after the first exact_rows are one rank-r product A B reads exact_rows*d + "
        "(L - exact_rows)*r + r*d weights per decode step instead of L*d (list_bytes_ratio); this measures, with no "
        "distillation, how far its softmax moves from the full list's.",
        "Fits of the factored rows W_tail: svd = truncated SVD of W_tail; data = the best rank r in the logits' squared error over the fit positions' "
        "hidden states (SVD of W S^1/2); kl = data refined by Adam on KL(full || rank r) over the fit positions "
        f"({cfg.refine_steps} steps of {cfg.refine_batch} positions, lr {cfg.refine_lr}).",
        f"Fit positions: the last {cfg.fit_blocks} training blocks of each model's distillation data; test positions: "
        "its validation blocks (the frozen backbone's final hidden states).",
        "kl_mean: mean over test positions of KL(full list || rank-r list) in nats over the list's slots and the "
        "rest (the seen tokens of heads.context_tokens left out); it bounds the change of the SpeLLM's whole "
        "next-string distribution. top1_agreement: share of positions where both put most mass on the same slot.",
    ]
    return write_table(cfg.paths.results_dir, cfg.out_name, "Ceiling of a factored (rank-r) shortlist list", command,
                       frame, [("KL to the full list and top-1 agreement, test positions", wide.reset_index())],
                       notes, started)
