"""`python -m spellm_exp.gpu_bundle [out_dir=dist/gpu-bundle]` (`spellm-gpu-bundle`, `make gpu-bundle`): the folder
that runs the GPU Table 2 on a bare GPU machine (benchmarks.gpu_bundle); then `bash <out_dir>/bench-gpu.sh OUT`."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from spellm_exp.benchmarks.gpu_bundle import BundleError, write_bundle
from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR, compose_config
from spellm_exp.teachers.packages import MissingPackageError

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="gpu_bundle")
def main(cfg: DictConfig) -> None:
    table = compose_config(cfg.table, ["device=cpu"])  # only its entries: which models, hence which tokenizers
    models = [o.split("=", 1)[1] for overrides in table.entries.values() for o in overrides if o.startswith("model=")]
    with exit_on(BundleError, MissingPackageError):
        manifest = write_bundle(Path(cfg.out_dir), Path(cfg.paths.cache_dir), models)
    log.info("wrote %s (%.1f MB, %s): on a GPU machine run `bash %s/bench-gpu.sh OUT_DIR`", cfg.out_dir,
             manifest["megabytes"], ", ".join(manifest["tokenizers"]), cfg.out_dir)


if __name__ == "__main__":
    main()
