"""Teachers: the pretrained (or random-init) causal LMs that SpeLLM heads are distilled from."""

from spellm_exp.models.loader import (
    ORIGIN_GGUF,
    ORIGIN_PRETRAINED,
    ORIGIN_RANDOM,
    Teacher,
    TeacherConfigError,
    TeacherInfo,
    check_model_config,
    load_teacher,
)
from spellm_exp.models.specs import MODELS, TINY_MODELS, Init, ModelConfig

__all__ = [
    "MODELS", "ORIGIN_GGUF", "ORIGIN_PRETRAINED", "ORIGIN_RANDOM", "TINY_MODELS", "Init",
    "ModelConfig", "Teacher", "TeacherConfigError", "TeacherInfo", "check_model_config", "load_teacher",
]
