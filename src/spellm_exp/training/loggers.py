"""Every experiment-logger concern in one place: building the configured loggers (conf/logger/), wandb
offline unless credentials exist, a job's final numbers as its wandb summary, and closing a wandb run
between the jobs of a multirun."""

from __future__ import annotations

import csv
import netrc
import os
import sys
from pathlib import Path

from hydra.utils import get_method
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import CharsetConfig, typed
from spellm_exp.provenance import git_sha

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


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that a resumed run keeps the rows its interrupted attempt logged before the
    checkpoint it resumes from (Lightning's deletes the whole file); the rows after it are logged again."""

    def __init__(self, log_dir: str, keep_before: int | None):
        self.keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if self.keep_before is None or not self._fs.isfile(self.metrics_file_path):
            return super()._check_log_dir_exists()
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            reader = csv.DictReader(file)
            keys = list(reader.fieldnames or [])
            kept = [row for row in reader if row.get("step") and float(row["step"]) < self.keep_before]
        with self._fs.open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = sorted(keys)


class ResumableCSVLogger(CSVLogger):
    """conf/logger/csv.yaml: Lightning's CSVLogger whose metrics.csv survives a resume (`keep_rows_before`)."""

    resumed_at: int | None = None

    def keep_rows_before(self, step: int) -> None:
        """This run resumes from the checkpoint of `step`: keep the rows logged before it."""
        self.resumed_at = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir, keep_before=self.resumed_at)
        return self._experiment


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """The loggers of `cfg.logger`, writing into `run_dir`."""
    loggers = []
    for name, node in (cfg.logger or {}).items():
        kwargs = OmegaConf.to_container(node, resolve=True)
        factory = get_method(kwargs.pop("_target_"))
        kwargs["save_dir"] = str(run_dir)
        if name == "wandb":  # the run config and tags feed wandb's table and parallel-coordinates views
            kwargs["tags"] = [f"model={cfg.model.name}", f"k={cfg.k}",
                              f"charset={typed(CharsetConfig, cfg.charset).kind.value}",
                              f"charset.size={cfg.charset.size}", f"git={git_sha()[:12]}", *kwargs.get("tags", [])]
            kwargs["config"] = OmegaConf.to_container(cfg, resolve=True)
        loggers.append(factory(**kwargs))
    return loggers


def _active_wandb_run():
    if "wandb" not in sys.modules:  # never imported: no run can be open
        return None
    import wandb

    return wandb.run


def wandb_summary(metrics: dict) -> None:
    """A job's final numbers as its wandb run's summary (for the table and parallel-coordinates views)."""
    run = _active_wandb_run()
    if run is not None:
        run.summary.update({f"final/{key}": value for key, value in metrics.items()})


def finish_wandb() -> None:
    """Close a wandb run between multirun jobs, so each job is its own run."""
    if _active_wandb_run() is not None:
        import wandb

        wandb.finish()
