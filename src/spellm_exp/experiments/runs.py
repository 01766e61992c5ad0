"""One way to get a distilled SpeLLM: reuse a finished run, else resume an interrupted one, else distil it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, open_dict

from spellm_exp.config import compose_config
from spellm_exp.core.spellm import META_FILE
from spellm_exp.errors import SpellmError
from spellm_exp.training.distill import distil
from spellm_exp.training.run_folder import FINISHED, RUN_FILE, differences, read_run, run_identity, shown

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


class RunMismatchError(SpellmError, ValueError):
    """A finished run folder whose SpeLLM is not the one the config asks for."""


def is_finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).exists() and (run_dir / "spellm" / META_FILE).exists()


def check_same_run(run_dir: Path, cfg: DictConfig) -> None:
    """A finished run is reused only when what decides its SpeLLM is what `cfg` asks for: the resolved training
    config (head settings, data, steps, seed, teacher, alphabet, k) and the code of the stages it ran
    (training.run_folder.run_identity); anything else fails here, before any evaluation, naming what differs."""
    record, wanted = read_run(run_dir), run_identity(cfg)
    fix = (f"Move or delete {run_dir} to distil it again with this config, or set paths.output_dir to another "
           "folder.")
    if record is None:
        raise RunMismatchError(f"{run_dir} holds a run without a {RUN_FILE} (written before run records existed), "
                               f"so nothing shows which config and code made it. {fix}")
    if record.get("status") != FINISHED:
        raise RunMismatchError(f"{run_dir} holds a run whose {RUN_FILE} says '{record.get('status')}', not "
                               f"'{FINISHED}'. {fix}")
    changed = differences(record["config"], wanted["config"])
    if record.get("code") != wanted["code"]:
        changed.append(f"the code of {'/'.join(wanted['code']['stages'])}: "
                       f"{(record.get('code') or {}).get('digest')} -> {wanted['code']['digest']}")
    if changed:
        raise RunMismatchError(f"{run_dir} holds a SpeLLM distilled otherwise than this config asks "
                               f"({shown(changed)}). {fix}")


def reuse_resume_or_distil(cfg: DictConfig, run_dir: Path) -> dict:
    """The training summary of the run in `run_dir`: read back when it finished with this config and code, else
    distilled now as `cfg` says, going on from where an earlier attempt of this same run stopped."""
    if is_finished(run_dir):
        check_same_run(run_dir, cfg)
        log.info("reusing %s", run_dir)
        return json.loads((run_dir / SUMMARY_FILE).read_text())
    if read_run(run_dir) is not None or (run_dir / "checkpoints" / "last.ckpt").exists():
        cfg = cfg.copy()  # an interrupted attempt: resumed if it is this run (training.run_folder checks)
        with open_dict(cfg):
            cfg.ckpt_path = "last"
    log.info("distilling into %s", run_dir)
    return distil(cfg, run_dir)


def run_folder(output_dir: str, experiment: str, train_profile: str, suffix: str = "") -> Path:
    """Where `trained_run` keeps the run of `experiment` under `train_profile` (its overrides named by `suffix`)."""
    return Path(output_dir) / "train" / f"{experiment}_{train_profile}{suffix}"


def trained_run(experiment: str, train_profile: str, output_dir: str, cache_dir: str,
                extra_overrides: tuple[str, ...] = (), suffix: str = "") -> Path:
    """The run folder of `experiment` under the training profile `train_profile` (plus `extra_overrides`,
    named by `suffix`), reused, resumed or distilled."""
    run_dir = run_folder(output_dir, experiment, train_profile, suffix)
    overrides = [f"experiment={experiment}", f"profile={train_profile}", f"paths.cache_dir={cache_dir}",
                 *extra_overrides]
    reuse_resume_or_distil(compose_config("train", overrides), run_dir)
    return run_dir
