"""`python -m spellm_exp.table1 [profile=quick|full]` (`spellm-table1`): Table 1, downstream quality of teacher
vs SpeLLM (results/table1.{md,csv}); distils the SpeLLMs it needs unless they finished."""

import hydra
from omegaconf import DictConfig

from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.reporting.table1 import write_table1


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="table1")
def main(cfg: DictConfig) -> None:
    write_as_command(write_table1, cfg, "spellm_exp.table1")  # ConfigError is a ValueError


if __name__ == "__main__":
    main()
