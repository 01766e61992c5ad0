"""`python -m spellm_exp.bench model=<teacher> [k=16] [checkpoint=<run>]` (`spellm-bench`): decode-step runtime,
teacher vs SpeLLM in the same loop (benchmarks.decode); writes <run folder>/bench.json (and `out_file`)."""

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from spellm_exp.benchmarks.decode import run_bench
from spellm_exp.benchmarks.measure import BenchConfigError
from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    with exit_on(BenchConfigError):
        record = run_bench(cfg)
    paths = [Path(HydraConfig.get().runtime.output_dir) / "bench.json"]
    if cfg.out_file:
        paths.append(Path(cfg.out_file))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str))
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
