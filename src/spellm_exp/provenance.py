"""Where a number came from: code version, machine, library versions, date and config."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

_VERSIONED = ("torch", "transformers", "lightning", "lm_eval", "spellm-exp")
BUNDLE_SHA = "SPELLM_GIT_SHA"


# what makes a number: the package's code and configs. Rewritten results/ and notebooks/ (a `make reproduce` writes
# them step by step) do not make the code that the later steps run "dirty".
CODE_PATHSPEC = ":(top)src"


def git_sha(repo: Path | None = None) -> str:
    """The commit SHA, suffixed with `-dirty` when tracked files under src/ have uncommitted changes; a copy of
    the source without git (the GPU bundle) names its commit in SPELLM_GIT_SHA."""
    if os.environ.get(BUNDLE_SHA):
        return os.environ[BUNDLE_SHA]
    cwd = repo or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", CODE_PATHSPEC],
                               cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


@functools.cache
def code_version(repo: Path | None = None) -> str:
    """The code this process runs, fixed at first call: the commit SHA, plus a digest of the uncommitted
    changes to tracked files under src/ when there are any (so two different dirty trees never look alike)."""
    sha = git_sha(repo)
    if not sha.endswith("-dirty"):
        return sha
    cwd = repo or Path(__file__).resolve().parent
    diff = subprocess.run(["git", "diff", "HEAD", "--", CODE_PATHSPEC], cwd=cwd, capture_output=True,
                          check=True).stdout
    return f"{sha}-{hashlib.sha256(diff).hexdigest()[:12]}"


PACKAGE_ROOT = Path(__file__).resolve().parent
TRAINING_STAGES = ("core", "teachers", "data", "training")  # what a distilled SpeLLM depends on
SHARED_MODULES = ("config.py", "errors.py")  # the schemas (and their defaults) every stage reads


@functools.cache
def stage_code_version(stages: tuple[str, ...] = TRAINING_STAGES) -> str:
    """A digest of the source of the package's stage folders `stages` and of its shared modules: what decides a
    result those stages make. Unlike the commit SHA it does not change when other code, tests or docs do, and it
    needs no git (an installed copy or the GPU bundle gets the same digest for the same code)."""
    digest = hashlib.sha256()
    files = [path for stage in stages for path in sorted((PACKAGE_ROOT / stage).rglob("*.py"))]
    for path in [*files, *(PACKAGE_ROOT / name for name in SHARED_MODULES)]:
        digest.update(path.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu} ({torch.get_num_threads()} threads)"


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def provenance(config: dict | None = None, device: torch.device | str = "cpu") -> dict:
    return {
        "git_sha": git_sha(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "python": platform.python_version(),
        "versions": {dist: _version(dist) for dist in _VERSIONED},
        "config": config,
    }


def command_line(module: str) -> str:
    """How this process was started, as a user would type it: `python -m <module> <its arguments>`."""
    return " ".join([f"python -m {module}", *sys.argv[1:]])
