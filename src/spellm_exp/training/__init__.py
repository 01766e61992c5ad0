"""Distillation with Lightning: the LightningModule, callbacks, multi-device helpers, loggers, and the run."""
