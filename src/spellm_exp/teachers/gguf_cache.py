"""GGUF checkpoints shipped in packages, converted once to a safetensors cache folder.

transformers dequantises GGUF to fp32 on every load (17 s for SmolLM2, 45 s for Gemma);
a `save_pretrained` copy reloads in seconds. Cache folders are written under a temporary
name and renamed when complete, so an interrupted conversion never leaves a broken cache.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from spellm_exp.teachers.packages import AssetPackage

MARKER = "spellm_source.json"


@dataclass(frozen=True)
class GgufCheckpoint:
    package: AssetPackage
    file_name: str
    parts: tuple[AssetPackage, ...] = field(default=())  # chunk packages joined by `assemble`

    def check_installed(self) -> None:
        for package in (self.package, *self.parts):
            package.check()

    @property
    def cache_key(self) -> str:
        dist = self.package.requirement.split("==")[0]
        return f"{dist}-{importlib.metadata.version(dist)}"

    @contextmanager
    def local_file(self, scratch: Path) -> Iterator[Path]:
        """The GGUF file on disk; chunked packages are assembled into `scratch` and removed after."""
        if not self.parts:
            yield self.package.folder() / self.file_name
            return
        target = scratch / self.file_name
        importlib.import_module(self.package.module).assemble(target)  # checks the sha256
        try:
            yield target
        finally:
            target.unlink(missing_ok=True)


@contextmanager
def _atomic_folder(final: Path) -> Iterator[Path]:
    # one scratch folder per process: the ranks of a torchrun job may all convert on a fresh machine
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if (final / MARKER).exists():  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _write_marker(folder: Path, ckpt: GgufCheckpoint, content: str) -> None:
    record = {
        "origin": "dequantised-gguf",
        "content": content,
        "package": ckpt.package.requirement,
        "gguf_file": ckpt.file_name,
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MARKER).write_text(json.dumps(record, indent=2))


def converted_model_folder(ckpt: GgufCheckpoint, cache_root: Path) -> Path:
    """A `from_pretrained`-ready folder (weights + tokenizer) for `ckpt`, converting on first use."""
    final = Path(cache_root) / "teachers" / ckpt.cache_key
    if (final / MARKER).exists():
        return final
    with _atomic_folder(final) as tmp, ckpt.local_file(tmp) as gguf:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        # the weights are dequantised now; transformers refuses to save a "quantised" model
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_marker(tmp, ckpt, "model")
    return final


def converted_tokenizer_folder(ckpt: GgufCheckpoint, cache_root: Path) -> Path:
    """Only the tokenizer of `ckpt`, for tiny models that pair a real tokenizer with random weights."""
    model_folder = Path(cache_root) / "teachers" / ckpt.cache_key
    if (model_folder / MARKER).exists():
        return model_folder
    final = Path(cache_root) / "tokenizers" / ckpt.cache_key
    if (final / MARKER).exists():
        return final
    with _atomic_folder(final) as tmp, ckpt.local_file(tmp) as gguf:
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        _write_marker(tmp, ckpt, "tokenizer")
    return final
