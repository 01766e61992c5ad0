"""`python -m spellm_exp.train model=<teacher> k=<heads>` (`spellm-train`): distil a SpeLLM from its teacher.

Resume an interrupted run: the same overrides, `hydra.run.dir=<its folder> ckpt_path=last`.
"""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR
from spellm_exp.training.distill import ConfigError, distil
from spellm_exp.training.loggers import finish_wandb

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        with exit_on(ConfigError):
            summary = distil(cfg, run_dir)
    finally:
        finish_wandb()  # each multirun job is its own wandb run
    log.info("val: %s", {k: round(v, 4) for k, v in summary["val"].items() if "/head" not in k})


if __name__ == "__main__":
    main()
