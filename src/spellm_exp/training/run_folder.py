"""A run folder belongs to one run.

While a run writes its folder it holds a lock on it (`.run.lock`, an OS file lock: it ends with the process, even
a killed one), so a second run into the same folder stops at once. The folder's `run.json` records what the run
is (its resolved config and the code of the stages it ran) and how far it got; a folder that already holds a run
is taken only by a resume of that same run (`ckpt_path=last`, the same config), and a finished run is reused only
when both its config and its code are what is asked for (experiments.runs).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from spellm_exp.errors import SpellmError
from spellm_exp.provenance import TRAINING_STAGES, provenance, stage_code_version

log = logging.getLogger(__name__)

RUN_FILE, LOCK_FILE = "run.json", ".run.lock"
# what a run writes into its folder (a resume that starts from step 0 clears them)
RUN_OUTPUTS = ("summary.json", "spellm", "checkpoints", "csv", "tensorboard", "wandb", RUN_FILE)
# what may be in a folder before its run starts: what Hydra writes at a job's start (its config and log) and a
# sweep's record of the job the run belongs to (experiments/jobs.py)
BEFORE_THE_RUN = (".hydra", LOCK_FILE, "job.json")
# where things go or how they are logged is not what a run is
NOT_IDENTITY = ("paths", "logger", "ckpt_path")
RUNNING, FINISHED, DIVERGED = "running", "finished", "diverged"


class RunFolderError(SpellmError, ValueError):
    """A run folder that holds, or is being written by, another run."""


def config_identity(cfg: DictConfig) -> dict:
    """The resolved config without what does not change a run's result (where it writes, how it logs)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_IDENTITY:
        config.pop(key, None)
    config.get("trainer", {}).pop("enable_progress_bar", None)
    return config


def run_identity(cfg: DictConfig) -> dict:
    """What decides a distilled SpeLLM: the resolved training config and the code of the stages it runs."""
    return {"config": config_identity(cfg), "code": {"stages": list(TRAINING_STAGES), "digest": stage_code_version()}}


def read_run(run_dir: Path) -> dict | None:
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{path} is not valid JSON ({err}); the folder's run cannot be identified: move or "
                             "delete the folder to distil it again.") from None


def write_run(run_dir: Path, record: dict) -> None:
    tmp = run_dir / f"{RUN_FILE}.partial"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(run_dir / RUN_FILE)


def differences(had: dict, wanted: dict, prefix: str = "") -> list[str]:
    """`key: had -> wanted` for every dotted key whose value differs (present on one side only included)."""
    lines = []
    for key in sorted(set(had) | set(wanted), key=str):
        a, b = had.get(key, "<unset>"), wanted.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}")
    return lines


def shown(lines: list[str], most: int = 8) -> str:
    return "; ".join(lines[:most]) + (f"; and {len(lines) - most} more" if len(lines) > most else "")


def outputs_in(run_dir: Path) -> list[str]:
    """The entries of `run_dir` that are not what a folder holds before its run starts (nor Hydra's job logs)."""
    if not run_dir.is_dir():
        return []
    return sorted(entry.name for entry in run_dir.iterdir()
                  if entry.name not in BEFORE_THE_RUN and not (entry.suffix == ".log" and entry.is_file()))


def _resume_hint(run_dir: Path) -> str:
    return (f"resume that run with its own overrides plus ckpt_path=last (its resolved config is in "
            f"{run_dir / RUN_FILE}), or give this run a folder of its own: hydra.run.dir=<a new folder> (by "
            "default every run gets a new time-stamped one)")


def check_claim(run_dir: Path, identity: dict, resume: bool) -> None:
    """Whether this run may write `run_dir`: free, or (`resume`) holding this very run; raises RunFolderError if not."""
    record = read_run(run_dir)
    if not resume:
        found = outputs_in(run_dir)
        if found:
            raise RunFolderError(f"{run_dir} already holds a run ({', '.join(found)}): {_resume_hint(run_dir)}.")
        return
    if record is None:
        if outputs_in(run_dir):
            raise RunFolderError(
                f"ckpt_path=last: {run_dir} has no {RUN_FILE} (it was written before run records existed, or by "
                "something else), so nothing shows it is this run; distil again in a new folder: hydra.run.dir=<a "
                "new folder>.")
        raise RunFolderError(f"ckpt_path=last found no run to resume in {run_dir} (no {RUN_FILE}); resume with "
                             "hydra.run.dir=<the interrupted run's folder>, or drop ckpt_path to start a new run.")
    changed = differences(record["config"], identity["config"])
    if changed:
        raise RunFolderError(
            f"ckpt_path=last: {run_dir} holds a run with another config ({shown(changed)}); resume it with its own "
            f"overrides (its config is in {run_dir / RUN_FILE}), or start this one in a new folder: "
            "hydra.run.dir=<a new folder> without ckpt_path.")
    if record.get("code") != identity["code"]:
        log.warning("%s: the code of %s changed since this run started; it goes on with this code", run_dir,
                    "/".join(TRAINING_STAGES))


def _lock(run_dir: Path):
    handle = (run_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderError(f"{run_dir} is being written by another run (process {holder}); wait for it to end, "
                             "or give this run a folder of its own: hydra.run.dir=<a new folder>.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@contextmanager
def claimed_run_folder(run_dir: Path, cfg: DictConfig, resume: bool) -> Iterator[dict]:
    """Hold `run_dir` for this run (rank 0; the other ranks of a data-parallel run write no files of their own):
    lock it, check that it is free or holds this very run (`resume`), record the run as running. Yields the
    record, which the run completes (status, seconds) and writes back with `write_run` when it finishes."""
    identity = run_identity(cfg)
    record = {**identity, "status": RUNNING, "provenance": provenance(identity["config"])}
    if rank_zero_only.rank != 0:
        yield record
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = _lock(run_dir)
    try:
        check_claim(run_dir, identity, resume)
        write_run(run_dir, record)
        yield record
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
