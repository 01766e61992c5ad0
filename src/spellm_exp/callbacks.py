"""Lightning callbacks: export the SpeLLM checkpoint of method.md during and after training."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from spellm_exp.lit_module import DistillModule, Trainable


class SpeLLMExport(Callback):
    """Writes `<dirpath>` as a SpeLLM checkpoint every `every_n_train_steps` and at the end (rank 0)."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int = 0):
        self.dirpath, self.every = Path(dirpath), every_n_train_steps

    def export(self, trainer: Trainer, module: DistillModule) -> None:
        if trainer.is_global_zero:
            module.spellm.save(self.dirpath, backbone_trained=module.mode is Trainable.full,
                               peft_model=module.peft_model)

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args) -> None:
        if self.every and trainer.global_step % self.every == 0:
            self.export(trainer, module)

    def on_train_end(self, trainer: Trainer, module: LightningModule) -> None:
        self.export(trainer, module)
