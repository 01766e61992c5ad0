"""`python -m spellm_exp.ablation` (`spellm-ablation`): where a SpeLLM loses downstream accuracy
(results/quality_ablation.{md,csv}); distils each variant of conf/ablation.yaml unless it finished."""

import hydra
from omegaconf import DictConfig

from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.reporting.ablation import write_ablation_table


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="ablation")
def main(cfg: DictConfig) -> None:
    write_as_command(write_ablation_table, cfg, "spellm_exp.ablation")  # ConfigError is a ValueError


if __name__ == "__main__":
    main()
