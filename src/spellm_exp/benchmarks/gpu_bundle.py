"""`make gpu-bundle`: a folder that runs the GPU Table 2 on a bare GPU machine (issue 17).

Such a machine has torch, transformers and lightning (versions may differ from the pins) but no package index,
no hub and none of the GGUF or data packages. The bundle carries what it lacks:
- `src/spellm_exp`: this package, configs included;
- `wheels/`: the pure-Python dependencies it does not have (hydra-core, omegaconf, antlr4), unpacked by the
  script without pip;
- `cache/tokenizers/<name>-exported`: the offline tokenizers the real-size architectures use as stand-ins
  (teachers.tokenizers.export_tokenizer), as plain transformers folders;
- `prompts.json`: the BoolQ passages the bench cuts its prompts from;
- `bench-gpu.sh`: `bash bench-gpu.sh OUT_DIR` times every architecture of conf/table2_gpu.yaml (random init,
  bf16, batch 1 and 8, decode.backend=compiled) with the bandwidth floor, and writes the records as
  OUT_DIR/bench/<device>/<entry>.json; copied under results/bench/, `python -m spellm_exp.table2
  run_bench=false` makes them rows of that device;
- `manifest.json`: the commit and versions it was built from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import spellm_exp
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.errors import SpellmError
from spellm_exp.provenance import provenance
from spellm_exp.teachers.registry import MODELS
from spellm_exp.teachers.tokenizers import export_tokenizer

WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime")  # what a GPU machine lacks; all pure Python
SCRIPT = Path(__file__).with_name("bench_gpu.sh")
MAX_BYTES = 64 * 2**20  # what a GPU machine's working tree may carry
PROMPT_PASSAGES = 64  # of over 1,000 characters: prompts of a few hundred tokens, batches up to 64


class BundleError(SpellmError, RuntimeError):
    """The bundle cannot be written as asked."""


def write_bundle(out_dir: Path, cache_dir: Path, models: list[str]) -> dict:
    """Write the bundle to `out_dir` (replacing it); returns its manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    package = Path(spellm_exp.__file__).resolve().parent
    shutil.copytree(package, out_dir / "src" / "spellm_exp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _wheels(out_dir / "wheels")
    tokenizers = sorted({MODELS[name].tokenizer for name in models})
    for name in tokenizers:
        export_tokenizer(name, cache_dir, out_dir / "cache")
    passages = [text for text in corpus_texts(["boolq"], 2_000_000) if len(text) > 1000][:PROMPT_PASSAGES]
    (out_dir / "prompts.json").write_text(json.dumps(passages))
    shutil.copy(SCRIPT, out_dir / "bench-gpu.sh")
    made = provenance({"models": models, "tokenizers": tokenizers})
    manifest = {"git_sha": made["git_sha"], "date": made["date"], "versions": made["versions"],
                "wheels": sorted(p.name for p in (out_dir / "wheels").glob("*.whl")), **made["config"]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    if size > MAX_BYTES:
        raise BundleError(f"the bundle is {size / 2**20:.1f} MB, over the {MAX_BYTES / 2**20:.0f} MB a GPU machine "
                          "takes; bench fewer models (their stand-in tokenizers are the bulk).")
    return {**manifest, "megabytes": size / 2**20}


def _wheels(folder: Path) -> None:
    """Wheels of the installed versions, built from the package index (antlr4 ships only as a source archive)."""
    requirements = [f"{name}=={version(name)}" for name in WHEELS]
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
                             str(folder), *requirements], capture_output=True, text=True)
    if result.returncode != 0:
        raise BundleError(f"pip could not build wheels of {requirements}: {result.stderr.strip()[-500:]}")
