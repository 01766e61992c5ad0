"""`python -m spellm_exp.memory_plan` (`spellm-memory-plan`): estimated memory per GPU for heads-only distillation
of each teacher, from the configs alone (results/distill_memory.{md,csv})."""

import hydra
from omegaconf import DictConfig

from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.reporting.memory import write_memory_table


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="memory_plan")
def main(cfg: DictConfig) -> None:
    write_as_command(write_memory_table, cfg, "spellm_exp.memory_plan")


if __name__ == "__main__":
    main()
