"""The LightningModule for self-distillation of a SpeLLM from its own teacher.

`train.trainable`:
- `heads` (default): the backbone is frozen; one backbone pass (no grad) gives both the
  teacher's logits and the heads' inputs, and no backward pass touches the backbone; with a
  `FeatureStore` (`train.cache_features`) that pass is read from disk after its first run, and with a
  `TargetStore` (`train.cache_targets`) so are the teacher's targets;
- `lora`: LoRA adapters on the backbone train with the heads; the teacher is the same model
  with the adapters switched off;
- `full`: the whole backbone trains; a frozen copy of it is the teacher.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from lightning.pytorch import LightningModule

from spellm_exp.config import HeadKind, LossConfig, Trainable, TrainConfig
from spellm_exp.core.backbone import run_backbone, teacher_head
from spellm_exp.core.ceilings import teacher_mixture
from spellm_exp.core.charset import PAD
from spellm_exp.core.heads import FACTORISED_KINDS, Factorised
from spellm_exp.core.losses import (
    LossParts,
    Targets,
    chunked_head_marginals,
    distillation_loss,
    masked_mean,
    resolve_objective,
    spelling_matrix,
    token_kl,
    token_samples,
)
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.data.features import FeatureStore, TargetStore
from spellm_exp.errors import SpellmError
from spellm_exp.training.distributed import check_same_on_every_rank


class DivergedError(SpellmError, RuntimeError):
    """A training loss that is not a finite number: the run stops, and nothing of it is exported."""


def nonfinite_parts(parts: LossParts) -> list[str]:
    """The names of the loss parts that are NaN or infinite."""
    named = {"kl": parts.kl, "kl_per_head": parts.kl_per_head, "ce": parts.ce,
             "token_kl": parts.token_kl}
    return [name for name, value in named.items() if value is not None and not bool(torch.isfinite(value).all())]


def exact_rest_tokens(spellm: SpeLLM, loss: LossConfig) -> torch.Tensor | None:
    """[|V|] bool, the shortlist's rest tokens whose part of the token objective is exact (`loss.exact_rest`);
    None when the loss estimates every token's part."""
    if not loss.exact_rest:
        return None
    return spellm.heads.rest_tokens(spellm.spelling_table, spellm.spellable)


class DistillModule(LightningModule):
    def __init__(self, spellm: SpeLLM, train: TrainConfig, loss: LossConfig, features: FeatureStore | None = None,
                 targets: TargetStore | None = None):
        super().__init__()
        self.spellm, self.train_cfg, self.loss_cfg = spellm, train, loss
        self.mode = Trainable(train.trainable)
        self.objective = resolve_objective(loss.objective, spellm.heads.kind)
        self._top_k, self._tail_samples = token_samples(loss, spellm.heads.kind)
        if features is not None and self.mode is not Trainable.heads:
            raise ValueError("A feature cache needs a frozen backbone: train.trainable=heads.")
        if targets is not None and features is None:
            raise ValueError("A target cache reads the teacher's hidden states from a feature cache.")
        self.features, self.targets = features, targets
        self.strict_loading = False  # checkpoints hold only what trains
        self.peft_model = None
        self.teacher_lm = None
        if self.mode is Trainable.heads:
            spellm.causal_lm.requires_grad_(False)
        elif self.mode is Trainable.lora:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=train.lora_r, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout,
                              target_modules=list(train.lora_targets))
            # injects the adapters into spellm.causal_lm in place and freezes everything else
            self.peft_model = get_peft_model(spellm.causal_lm, lora)
        else:
            self.teacher_lm = copy.deepcopy(spellm.causal_lm).requires_grad_(False).eval()
        for name in train.freeze_heads:
            spellm.heads.part(name).requires_grad_(False)
        self.register_buffer("spelling_matrix", spelling_matrix(self.table, spellm.alphabet.size), persistent=False)
        self.register_buffer("rest_tokens", exact_rest_tokens(spellm, loss), persistent=False)
        self._batch_started = 0.0
        self._val_chars_counts = torch.zeros(2, spellm.k)  # (agreements, positions) per head, per validation

    @property
    def table(self) -> torch.Tensor:
        return self.spellm.spelling_table

    @property
    def spellable(self) -> torch.Tensor:
        return self.spellm.spellable

    def setup(self, stage: str) -> None:
        """Before the strategy wraps the module: keep the frozen parts out of DDP, open the feature cache."""
        # DDP would broadcast every parameter and buffer from rank 0 at wrap time and put frozen ones in
        # its bookkeeping; they are identical on every rank by construction (same weights, same table)
        self._ddp_params_and_buffers_to_ignore = [
            *(name for name, p in self.named_parameters() if not p.requires_grad),
            *(name for name, _ in self.named_buffers())]
        trainer = self.trainer
        if trainer.world_size > 1:
            check_same_on_every_rank("alphabets and spelling tables", self.spellm.spelling.fingerprint(),
                                     trainer.strategy.all_gather, trainer.strategy.root_device)
        for store in (self.features, self.targets):
            if store is not None:
                store.open_in_turn(trainer.global_rank, trainer.local_rank, trainer.strategy.barrier)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode is Trainable.heads:  # frozen: no dropout, no batch statistics
            self.spellm.causal_lm.eval()
        if self.teacher_lm is not None:
            self.teacher_lm.eval()
        return self

    # --- the step -----------------------------------------------------------------------------
    def _frozen_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.spellm.backbone(ids)[0]

    def _hidden_states(self, ids: torch.Tensor, index: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module]:
        """(student head inputs, teacher hidden states, teacher CausalLM) for a batch of ids."""
        if self.mode is Trainable.heads:
            if self.features is not None and index is not None:
                hidden = self.features.get(index, ids, self._frozen_hidden)
            else:
                hidden = self._frozen_hidden(ids)
            return hidden, hidden, self.spellm.causal_lm
        if self.mode is Trainable.lora:
            with torch.no_grad(), self.peft_model.disable_adapter():
                teacher_hidden, _ = self.spellm.backbone(ids)
            return self.spellm.backbone(ids)[0], teacher_hidden, self.spellm.causal_lm
        with torch.no_grad():
            teacher_hidden = run_backbone(self.teacher_lm, ids)[0]
        return self.spellm.backbone(ids)[0], teacher_hidden, self.teacher_lm

    def loss_parts(self, ids: torch.Tensor, index: torch.Tensor | None = None):
        """(loss parts, student distribution over N positions, targets, next-token ids [N], teacher hidden states
        [B, T, d], teacher CausalLM) for a batch of ids (blocks `index` of the data, for the feature cache)."""
        hidden, teacher_hidden, teacher_lm = self._hidden_states(ids, index)

        def compute_targets(rows: torch.Tensor) -> Targets:  # teacher hidden states [N, d]
            return chunked_head_marginals(
                rows, lambda h: teacher_head(teacher_lm, h), self.table, self.spellable, self.spellm.alphabet.size,
                self.loss_cfg.temperature, self.loss_cfg.chunk_positions(self.table.shape[0]), self.spelling_matrix,
                self._top_k, self._tail_samples, self.rest_tokens)

        with torch.no_grad():
            if self.targets is not None and index is not None:
                targets = self.targets.get(index, teacher_hidden, compute_targets)
            else:
                targets = compute_targets(teacher_hidden.flatten(0, 1))
        student = self.spellm.strings(hidden.flatten(0, 1), context=self.spellm.token_context(ids))
        target_ids = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -100)], dim=1).flatten()
        parts = distillation_loss(student, targets, self.loss_cfg.temperature, self.loss_cfg.ce_weight,
                                  target_ids, self.table, self.spellable, self.objective)
        return parts, student, targets, target_ids, teacher_hidden, teacher_lm

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> LossParts:
        parts, student, targets, target_ids, teacher_hidden, teacher_lm = self.loss_parts(batch["ids"], batch["index"])
        with torch.no_grad():
            log_p = student.marginal_log_probs().detach().float()  # [N, k, |Sigma|]
        self._log_metrics(stage, parts, log_p, targets, target_ids, batch["ids"].shape[0])
        if stage == "val":
            with torch.no_grad():
                ceiling = self.ceiling_token_kl(teacher_hidden, teacher_lm, targets)
            if ceiling is not None:
                self.log("val/ceiling_token_kl", ceiling, on_epoch=True, batch_size=batch["ids"].shape[0],
                         sync_dist=True)
        return parts

    def ceiling_token_kl(self, teacher_hidden: torch.Tensor, teacher_lm: torch.nn.Module,
                         targets: Targets) -> torch.Tensor | None:
        """The token-level KL of the best this head type can do with the teacher's own distribution
        (core/ceilings.py), on the same positions and with the same estimator as the student's `token_kl`:
        factorised heads, the product of the teacher's marginals (exactly sum_i H(q_i) - H(q)); a mixture of M,
        `teacher_mixture_M`. None for the autoregressive type, whose ceiling is the teacher itself (0)."""
        kind = self.spellm.heads.kind
        if kind in FACTORISED_KINDS:
            return masked_mean(token_kl(Factorised(targets.marginals.clamp(min=1e-30).log()), targets, self.table),
                               targets.valid)
        if kind is not HeadKind.mixture:
            return None
        rows, chunk = teacher_hidden.flatten(0, 1), self.loss_cfg.chunk_positions(self.table.shape[0])
        kl = torch.cat([token_kl(teacher_mixture(teacher_head(teacher_lm, rows[start:start + chunk]), self.table,
                                                 self.spellable, self.spellm.alphabet.size,
                                                 self.spellm.heads.components, self.spelling_matrix),
                                 targets.rows(slice(start, start + chunk)), self.table)
                        for start in range(0, rows.shape[0], chunk)])
        return masked_mean(kl, targets.valid)

    def _log_metrics(self, stage, parts, log_p: torch.Tensor, targets: Targets, target_ids, batch_size) -> None:
        """Per-head metrics from the student's per-position log-probs (autoregressive heads: along their
        greedy string)."""
        valid = targets.valid
        predicted = log_p.argmax(-1)  # [N, k]
        has_truth = (target_ids >= 0) & self.spellable[target_ids.clamp(min=0)]
        truth = self.table[target_ids.clamp(min=0)]
        metrics = {"kl": parts.kl, "dropped_mass": targets.dropped_mass.mean()}
        if parts.token_kl is not None:
            metrics["token_kl"] = parts.token_kl
        if self.objective == "token":
            metrics["marginal_kl"] = parts.kl_per_head.mean()
        if parts.ce is not None:
            metrics["ce"] = parts.ce
        teacher_top = targets.marginals.argmax(-1)  # [N, k]
        agree_teacher = (predicted == teacher_top)[valid].float().mean(0)
        # the same where the teacher's top symbol is a character (late heads agree on PAD trivially); such
        # positions are rare for late heads, so validation pools the counts over the epoch (a mean of
        # per-batch ratios would count a batch without any as 0 agreement); NaN where there are none
        on_chars = (teacher_top != PAD) & valid.unsqueeze(-1)
        chars_counts = torch.stack([((predicted == teacher_top) & on_chars).sum(0), on_chars.sum(0)]).float()
        if stage == "val":
            self._val_chars_counts += chars_counts
        agree_chars = chars_counts[0] / chars_counts[1]
        agree_truth = (predicted == truth)[has_truth].float().mean(0)
        entropy = -(log_p.exp() * log_p).sum(-1).mean(0)
        for i in range(self.spellm.k):
            metrics[f"head{i:02d}/kl"] = parts.kl_per_head[i]
            metrics[f"head{i:02d}/agree_teacher"] = agree_teacher[i]
            if stage != "val":
                metrics[f"head{i:02d}/agree_teacher_chars"] = agree_chars[i]
            metrics[f"head{i:02d}/agree_truth"] = agree_truth[i]
            metrics[f"head{i:02d}/entropy"] = entropy[i]
        metrics["agree_teacher"] = agree_teacher.mean()
        metrics["agree_truth"] = agree_truth.mean()
        on_step = stage == "train"
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()}, on_step=on_step,
                      on_epoch=not on_step, batch_size=batch_size, sync_dist=not on_step)
        self.log(f"{stage}/loss", parts.total, prog_bar=True, on_step=on_step, on_epoch=not on_step,
                 batch_size=batch_size, sync_dist=not on_step)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self._step(batch, "train")
        self._stop_if_diverged(parts)
        return parts.total

    def _stop_if_diverged(self, parts: LossParts) -> None:
        """A NaN or infinite loss ends the run before its backward pass can write NaN into the heads; every
        rank decides together (one rank raising alone would leave the others waiting in an all-reduce)."""
        loss = parts.total
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        named = ", ".join(nonfinite_parts(parts)) or "none here: another rank's"
        raise DivergedError(
            f"training diverged at step {self.trainer.global_step}: the loss is not finite (train/loss = "
            f"{loss.item()}; non-finite parts: {named}); nothing was exported. Lower train.lr (now "
            f"{self.train_cfg.lr:g}) or loss.temperature, or check the teacher's logits, and distil again in a "
            "new folder.")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._val_chars_counts = torch.zeros(2, self.spellm.k, device=self.device)

    def on_validation_epoch_end(self) -> None:
        """Per-head and pooled agreement on character positions, from the epoch's counts (all ranks)."""
        counts = self.trainer.strategy.reduce(self._val_chars_counts, reduce_op="sum")
        per_head = counts[0] / counts[1]  # NaN for a head whose teacher top symbol was never a character
        metrics = {f"val/head{i:02d}/agree_teacher_chars": per_head[i] for i in range(self.spellm.k)}
        metrics["val/agree_teacher_chars"] = counts[0].sum() / counts[1].sum().clamp(min=1)
        self.log_dict(metrics, sync_dist=True)  # already equal on every rank: the mean changes nothing

    # --- throughput ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx) -> None:
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        seconds = time.perf_counter() - self._batch_started
        self.log("train/tokens_per_s", batch["ids"].numel() / seconds, on_step=True, prog_bar=True)

    # --- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.train_cfg.lr, weight_decay=self.train_cfg.weight_decay)
        total = max(self.trainer.max_steps, 1) if self.trainer.max_steps > 0 else 1000
        warmup, floor = self.train_cfg.warmup_steps, self.train_cfg.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(total - warmup, 1))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only what trains: a heads-only checkpoint is a few MB, not the whole backbone."""
        # FSDP's nested units add this to parameter names; the (full) state dict does not have it
        trainable = {name.replace("_fsdp_wrapped_module.", "") for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
