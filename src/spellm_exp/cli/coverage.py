"""`python -m spellm_exp.coverage` (`spellm-coverage`): spelling coverage of the offline tokenizers by k and alphabet
(results/coverage.{md,csv})."""

import hydra
from omegaconf import DictConfig

from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.reporting.coverage import write_coverage_table
from spellm_exp.teachers.packages import MissingPackageError


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="coverage")
def main(cfg: DictConfig) -> None:
    write_as_command(write_coverage_table, cfg, "spellm_exp.coverage", (ValueError, MissingPackageError))


if __name__ == "__main__":
    main()
