"""Typed schemas behind the Hydra config groups, registered before any config is composed."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from spellm_exp.charset import CharsetConfig
from spellm_exp.data.datamodule import DataConfig
from spellm_exp.models.specs import ModelConfig

CONFIG_PATH = "../../conf"  # the repository's conf/, seen from this package (editable install)


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="charset", name="charset_schema", node=CharsetConfig)
    store.store(group="data", name="data_schema", node=DataConfig)


def model_config(cfg: DictConfig) -> ModelConfig:
    """The typed model config; an unset cache_dir falls back to paths.cache_dir."""
    model: ModelConfig = OmegaConf.to_object(cfg.model)
    if model.cache_dir is None and "paths" in cfg:
        model.cache_dir = cfg.paths.cache_dir
    return model


register_configs()
