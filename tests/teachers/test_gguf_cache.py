"""The conversion cache never leaves a half-written folder, and labels what it holds."""

import json

import pytest

from spellm_exp.teachers import ORIGIN_GGUF, ORIGIN_PRETRAINED
from spellm_exp.teachers.gguf_cache import MARKER, _atomic_folder
from spellm_exp.teachers.loader import _folder_origin


def test_interrupted_conversion_leaves_no_cache(tmp_path):
    final = tmp_path / "teachers" / "pkg-1.0"
    with pytest.raises(KeyboardInterrupt):
        with _atomic_folder(final) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not final.exists()
    assert list((tmp_path / "teachers").iterdir()) == []


def test_completed_conversion_replaces_a_stale_folder(tmp_path):
    final = tmp_path / "pkg-1.0"
    final.mkdir()
    (final / "stale").write_text("x")
    with _atomic_folder(final) as tmp:
        (tmp / MARKER).write_text(json.dumps({"content": "model"}))
    assert sorted(p.name for p in final.iterdir()) == [MARKER]
    assert _folder_origin(final) == ORIGIN_GGUF


def test_plain_folder_is_pretrained(tmp_path):
    assert _folder_origin(tmp_path) == ORIGIN_PRETRAINED
