"""`python -m spellm_exp.list_rank`: the ceiling of a factored (rank-r) shortlist list, no distillation
(results/list_rank.{md,csv})."""

import hydra
from omegaconf import DictConfig

from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.core.spellm import CheckpointError
from spellm_exp.reporting.list_rank import write_list_rank_table
from spellm_exp.teachers.packages import MissingPackageError


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="list_rank")
def main(cfg: DictConfig) -> None:
    write_as_command(write_list_rank_table, cfg, "spellm_exp.list_rank",
                     (ValueError, CheckpointError, MissingPackageError))


if __name__ == "__main__":
    main()
