"""Lightning callbacks: export the SpeLLM checkpoint of method.md during and after training, check that the
replicas of a data-parallel run ended with the same weights, count a run's seconds across resumes, and a
progress bar that does not announce an epoch count a step-limited run does not have."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.strategies import DDPStrategy

from spellm_exp.training.distributed import full_weights
from spellm_exp.training.module import DistillModule, Trainable


class SpeLLMExport(Callback):
    """Writes `<dirpath>` as a SpeLLM checkpoint every `every_n_train_steps` and at the end (rank 0)."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0):
        self.dirpath, self.every = Path(dirpath), every_n_train_steps

    def export(self, trainer: Trainer, module: DistillModule) -> None:
        with full_weights(trainer):  # every rank enters (FSDP gathers), rank 0 writes
            if trainer.is_global_zero:
                module.spellm.save(self.dirpath, backbone_trained=module.mode is Trainable.full,
                                   peft_model=module.peft_model)

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self.export(trainer, module)

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        self.export(trainer, module)


def weight_digest(module: torch.nn.Module) -> torch.Tensor:
    """[n, 3] float64: sum, sum of squares and sum of |w| of each trainable tensor (chunked: no fp64 copy
    of a whole embedding). Equal weights give equal digests; any changed element changes them."""
    rows = []
    for param in (p for p in module.parameters() if p.requires_grad):
        moments = torch.zeros(3, dtype=torch.float64, device=param.device)
        for chunk in param.detach().flatten().split(1 << 24):
            chunk = chunk.double()
            moments += torch.stack([chunk.sum(), chunk.square().sum(), chunk.abs().sum()])
        rows.append(moments)
    return torch.stack(rows)


class ReplicaCheck(Callback):
    """At the end of fit, gathers every rank's weight digest: data-parallel replicas must end identical
    (a spread means the ranks drifted apart: another seed, another data order, a non-synced parameter).
    `report` is what summary.json records: world size and the largest digest difference to rank 0."""

    def __init__(self):
        self.report: dict | None = None

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        if trainer.world_size > 1 and not isinstance(trainer.strategy, DDPStrategy):
            self.report = {"world_size": trainer.world_size, "max_digest_diff": None}  # sharded: not replicas
            return
        digests = weight_digest(module)
        gathered = trainer.strategy.all_gather(digests) if trainer.world_size > 1 else digests.unsqueeze(0)
        spread = (gathered - gathered[0]).abs().max().item()
        self.report = {"world_size": trainer.world_size, "max_digest_diff": spread}


class TrainingClock(Callback):
    """The seconds a run has taken, its interrupted attempts included: each checkpoint stores the seconds so far,
    and a run resumed from it goes on counting from there (the time after an attempt's last checkpoint is not
    in the result, and not counted)."""

    def __init__(self):
        self.started, self.earlier = time.perf_counter(), 0.0

    @property
    def seconds(self) -> float:
        return self.earlier + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier = float(state_dict["seconds"])


class FlushLogsAtCheckpoints(Callback):
    """Writes the loggers' buffered rows out once a checkpoint's step has been logged (Lightning flushes every
    100 steps): a run killed after a checkpoint has every row up to it on disk, and its resume adds the rest."""

    def __init__(self, every_n_train_steps: int):
        self.every = every_n_train_steps

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        if self.every and trainer.global_step and trainer.global_step % self.every == 0:
            for logger in trainer.loggers:
                logger.save()


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, without the "/-2" it appends to the epoch of a run limited by steps
    (trainer.max_epochs=-1): the bar's own count already shows the steps."""

    def _get_train_description(self, current_epoch: int) -> str:
        description = f"Epoch {current_epoch}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs - 1}"
        return f"{description:{len(self.validation_description)}}"


def progress_bars(enabled: bool) -> list[Callback]:
    """The bar Lightning would pick (rich when it is installed), as StepProgressBar; none when disabled."""
    return [StepProgressBar()] if enabled and _RICH_AVAILABLE else []
