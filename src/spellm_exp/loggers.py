"""Experiment loggers beyond Lightning's defaults: wandb, offline unless credentials exist."""

from __future__ import annotations

import netrc
import os

from lightning.pytorch.loggers import WandbLogger

WANDB_HOST = "api.wandb.ai"


def has_wandb_credentials() -> bool:
    """wandb's own switches: the WANDB_API_KEY variable, or a ~/.netrc entry written by `wandb login`."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str, offline: bool | None = None, **kwargs) -> WandbLogger:
    """A WandbLogger that runs offline when no API key is configured, instead of crashing.

    Offline runs land in <save_dir>/wandb/offline-run-*; upload them later with `wandb sync <folder>`.
    """
    if offline is None:
        offline = not has_wandb_credentials()
    return WandbLogger(save_dir=save_dir, project=project, offline=offline, **kwargs)
