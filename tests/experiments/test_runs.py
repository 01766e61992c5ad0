"""Reusing a finished run: only for the alphabet and k it was distilled with."""

import json

import pytest
from omegaconf import OmegaConf

from spellm_exp.core.spellm import META_FILE
from spellm_exp.experiments.runs import RunMismatchError, check_same_output_layer, reuse_resume_or_distil


def _finished(run_dir, charset, k=16):
    (run_dir / "spellm").mkdir(parents=True)
    (run_dir / "spellm" / META_FILE).write_text("{}")
    summary = {"k": k, "provenance": {"config": {"charset": charset, "k": k}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def test_a_run_from_before_the_escape_is_not_reused_for_an_escaped_alphabet(tmp_path):
    summary = _finished(tmp_path / "run", {"kind": "chars", "size": 64})  # written before `escape` existed
    escaped = OmegaConf.create({"charset": {"kind": "chars", "size": 64, "escape": True}, "k": 16})
    with pytest.raises(RunMismatchError, match=r"distilled with charset=\{'escape': False.*Move or delete"):
        reuse_resume_or_distil(escaped, tmp_path / "run")
    plain = OmegaConf.create({"charset": {"kind": "chars", "size": 64, "escape": False}, "k": 16})
    assert reuse_resume_or_distil(plain, tmp_path / "run") == summary


def test_other_alphabet_sizes_and_k_are_refused_and_bytes_ignore_the_escape(tmp_path):
    summary = _finished(tmp_path / "run", {"kind": "bytes", "size": 256})
    check_same_output_layer(summary, OmegaConf.create({"charset": {"kind": "bytes", "size": 256, "escape": False},
                                                       "k": 16}), tmp_path)
    with pytest.raises(RunMismatchError, match="k=16, but this config asks for k=8"):
        check_same_output_layer(summary, OmegaConf.create({"charset": {"kind": "bytes", "size": 256}, "k": 8}),
                                tmp_path)
    with pytest.raises(RunMismatchError, match="charset"):
        check_same_output_layer(summary, OmegaConf.create({"charset": {"kind": "chars", "size": 256}, "k": 16}),
                                tmp_path)
