"""`python -m spellm_exp.sweep -m experiment=table3 [k=...] [charset.size=...]` (`spellm-sweep`): the jobs of a
Table 3 sweep, each distilled, scored and timed in its own folder (experiments.sweep)."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from spellm_exp.benchmarks.measure import BenchConfigError
from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR
from spellm_exp.experiments.sweep import run_job
from spellm_exp.training.distill import ConfigError
from spellm_exp.training.loggers import finish_wandb

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="sweep")
def main(cfg: DictConfig) -> None:
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with exit_on(ConfigError, BenchConfigError):
            record = run_job(cfg, job_dir)
    finally:
        finish_wandb()  # each multirun job is its own wandb run
    if "metrics" in record:  # a diverged job has none (job.json says why)
        log.info("%s: %s", job_dir.name, {k: round(v, 4) for k, v in record["metrics"].items()})


if __name__ == "__main__":
    main()
