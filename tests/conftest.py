"""Shared fixtures: offline switches, a persistent tokenizer cache, and tiny teachers."""

import os

# Before anything imports huggingface_hub, which reads these once: tests never touch a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from spellm_exp.config import compose_config, register_configs  # noqa: E402
from spellm_exp.teachers import Teacher, load_teacher  # noqa: E402

register_configs()  # the typed schemas, before any test composes a config

REPO_ROOT = Path(__file__).resolve().parents[1]
# Converted tokenizers persist between test sessions here (gitignored); the first session builds them.
TEST_CACHE = REPO_ROOT / ".cache" / "spellm_exp-tests"


@pytest.fixture(scope="session")
def cache_dir() -> str:
    TEST_CACHE.mkdir(parents=True, exist_ok=True)
    return str(TEST_CACHE)


@pytest.fixture(scope="session")
def tiny_teacher(cache_dir):
    """load a tiny teacher by name, once per session (tests must not mutate it)."""
    loaded: dict[str, Teacher] = {}

    def get(name: str) -> Teacher:
        if name not in loaded:
            loaded[name] = load_teacher(name=name, cache_dir=cache_dir)
        return loaded[name]

    return get


def compose_train(*overrides: str):
    """conf/train.yaml with `overrides`, as `python -m spellm_exp.train` composes it."""
    return compose_config("train", overrides)
