"""`python -m spellm_exp.quickstart [model=...] [head_type=...]` (`make quickstart`): the method end to end in
minutes: distil a head type of Table 1 for a few steps, score it and its teacher on a few documents, time a few
decode steps (experiments.quickstart); everything in this command's own new run folder."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR
from spellm_exp.experiments.quickstart import run_quickstart

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="quickstart")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with exit_on():
        run_quickstart(cfg, run_dir)
    log.info("wrote %s", run_dir)


if __name__ == "__main__":
    main()
