"""`make gpu-bundle`: the folder carries what a bare GPU machine lacks, and its script runs the table from it."""

import json
import os
import subprocess
import sys

import pytest

import spellm_exp.benchmarks.gpu_bundle as bundle
from spellm_exp.teachers.tokenizers import load_offline_tokenizer


@pytest.fixture(scope="module")
def written(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("bundle") / "gpu-bundle"
    real_wheels = bundle._wheels
    bundle._wheels = lambda folder: folder.mkdir(parents=True)  # the package index is not for tests
    try:
        manifest = bundle.write_bundle(out, cache_dir, ["llama", "llama32_1b", "qwen"])
    finally:
        bundle._wheels = real_wheels
    return out, manifest


def test_the_bundle_holds_source_tokenizers_prompts_and_script(written, cache_dir):
    out, manifest = written
    assert (out / "src" / "spellm_exp" / "conf" / "table2_gpu.yaml").exists()
    assert not list(out.rglob("__pycache__"))
    assert manifest["tokenizers"] == ["gpt-neox", "smollm2"] and manifest["megabytes"] < 64
    assert json.loads((out / "manifest.json").read_text())["git_sha"] == manifest["git_sha"]
    # an exported tokenizer loads without its package and encodes exactly as the packaged one
    exported = load_offline_tokenizer("smollm2", out / "cache")
    packaged = load_offline_tokenizer("smollm2", cache_dir)
    text = "The capital of France is Paris, é 日本"
    assert exported(text).input_ids == packaged(text).input_ids
    passages = json.loads((out / "prompts.json").read_text())
    assert len(passages) == bundle.PROMPT_PASSAGES and min(map(len, passages)) > 1000


def test_bench_gpu_script_writes_compiled_records_with_the_bandwidth_floor(written, tmp_path):
    """The script as a GPU machine runs it, here on the CPU with a tiny model (its own python: this venv's)."""
    out, manifest = written
    result = subprocess.run(
        ["bash", str(out / "bench-gpu.sh"), str(tmp_path / "run"), "device=cpu", "dtype=float32", "~entries",
         '+entries={tiny: ["model=tiny_llama"]}',
         'common=["decode.backend=compiled","batch_sizes=[1]","charset=bytes","model.init=random","layer_repeats=2"]',
         "profiles.gpu_bundle.decode_steps=3", "profiles.gpu_bundle.prompt_tokens=16",
         "profiles.gpu_bundle.repeats=1", "profiles.gpu_bundle.warmup=1"],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    (record_path,) = (tmp_path / "run" / "bench").glob("*/tiny.json")
    record = json.loads(record_path.read_text())
    assert record["provenance"]["git_sha"] == manifest["git_sha"]  # from the manifest: the bundle has no git
    assert record["spellm"]["decode"] == {"mode": "free", "backend": "compiled", "compiler": "inductor"}
    floor = record["bandwidth"]
    assert floor["copy_gb_s"] > 0 and floor["spellm_floor_ms"] < floor["teacher_floor_ms"]
    (batch,) = record["batches"]
    assert batch["teacher"]["runs"][0]["steps"] == 3 and batch["spellm"]["runs"][0]["steps"] == 3
    assert "| compiled | 1 |" in (tmp_path / "run" / "results" / "table2.md").read_text()
