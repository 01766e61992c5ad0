"""`python -m spellm_exp.bench_distill [--config-name bench_distill_gpu]` (`spellm-bench-distill`): heads-only
distillation throughput and memory vs a plain teacher forward (results/distill_throughput.{md,csv})."""

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from spellm_exp.benchmarks.distill import bench_model, resolve_precision
from spellm_exp.benchmarks.measure import resolve_device
from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR
from spellm_exp.provenance import command_line, provenance
from spellm_exp.reporting.throughput import write_throughput_table


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench_distill")
def main(cfg: DictConfig) -> None:
    with exit_on(ValueError):  # BenchConfigError and an unknown precision are ValueErrors
        device = resolve_device(cfg.device)
        precision = resolve_precision(cfg.precision, device)
    torch.manual_seed(0)
    started = provenance(OmegaConf.to_container(cfg, resolve=True), device)
    rows = pd.DataFrame([row for name in cfg.models for row in bench_model(name, cfg, device, precision)])
    write_throughput_table(cfg, rows, started, command_line("spellm_exp.bench_distill"))


if __name__ == "__main__":
    main()
