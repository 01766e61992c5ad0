"""Teachers: the pretrained (or random-init) causal LMs that SpeLLM heads are distilled from."""

from spellm_exp.config import Init, ModelConfig
from spellm_exp.teachers.loader import (
    ORIGIN_GGUF,
    ORIGIN_PRETRAINED,
    ORIGIN_RANDOM,
    Teacher,
    TeacherConfigError,
    TeacherInfo,
    check_model_config,
    greedy_continuation,
    load_teacher,
)
from spellm_exp.teachers.registry import MODELS, TINY_MODELS

__all__ = [
    "MODELS", "ORIGIN_GGUF", "ORIGIN_PRETRAINED", "ORIGIN_RANDOM", "TINY_MODELS", "Init",
    "ModelConfig", "Teacher", "TeacherConfigError", "TeacherInfo", "check_model_config", "greedy_continuation",
    "load_teacher",
]
