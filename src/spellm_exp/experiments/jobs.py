"""Job records of a sweep: `job.json` holds a job's fingerprint (its config and the code), status and metrics,
so a re-run skips what finished, goes on with what did not, and starts over where anything changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from spellm_exp.provenance import code_version
from spellm_exp.training.run_folder import RUN_OUTPUTS, config_identity

JOB_FILE, BENCH_FILE, EVAL_FOLDER = "job.json", "bench.json", "eval"
# what a job writes (its training run's outputs, then its scores and timings); removed when a job starts over
JOB_OUTPUTS = (*RUN_OUTPUTS, EVAL_FOLDER, BENCH_FILE, JOB_FILE)


def job_fingerprint(cfg: DictConfig) -> dict:
    """A job is its config and the whole package's code (it trains, scores and times)."""
    return {"config": config_identity(cfg), "code": code_version()}


def read_job(job_dir: Path) -> dict | None:
    path = job_dir / JOB_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_job(job_dir: Path, record: dict) -> None:
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir / f"{JOB_FILE}.partial"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.rename(job_dir / JOB_FILE)


def start_over(job_dir: Path) -> None:
    for name in JOB_OUTPUTS:
        path = job_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
