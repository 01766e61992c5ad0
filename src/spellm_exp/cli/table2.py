"""`python -m spellm_exp.table2 [profile=quick|full] [device=auto|cpu|cuda] [run_bench=false]` (`spellm-table2`):
Table 2, decode-step runtime of teacher vs SpeLLM (results/table2.{md,csv,png}, records in results/bench/)."""

import hydra
from omegaconf import DictConfig

from spellm_exp.benchmarks.measure import BenchConfigError
from spellm_exp.cli import write_as_command
from spellm_exp.config import CONFIG_DIR
from spellm_exp.reporting.table2 import write_table2


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="table2")
def main(cfg: DictConfig) -> None:
    write_as_command(write_table2, cfg, "spellm_exp.table2", (BenchConfigError,))


if __name__ == "__main__":
    main()
