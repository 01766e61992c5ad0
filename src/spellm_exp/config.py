"""Typed schemas behind the Hydra config groups, registered before any config is composed."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from spellm_exp.models.specs import ModelConfig

CONFIG_PATH = "../../conf"  # the repository's conf/, seen from this package (editable install)


def register_configs() -> None:
    ConfigStore.instance().store(group="model", name="model_schema", node=ModelConfig)


def model_config(cfg: DictConfig) -> ModelConfig:
    return OmegaConf.to_object(cfg.model)


register_configs()
