"""`python -m spellm_exp.table3 [sweep_dir=...]` (`spellm-table3`): Table 3 and its plots from the job folders of a
sweep (results/table3.{md,csv}, table3_heads.csv, table3_*.png)."""

import hydra
from omegaconf import DictConfig

from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.reporting.table3 import JobError, write_table3


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="table3")
def main(cfg: DictConfig) -> None:
    write_as_command(write_table3, cfg, "spellm_exp.table3", (JobError,))


if __name__ == "__main__":
    main()
