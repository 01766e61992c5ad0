"""One way to get a distilled SpeLLM: reuse a finished run, else resume an interrupted one, else distil it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from spellm_exp.config import CharsetKind, compose_config
from spellm_exp.core.charset import Alphabet
from spellm_exp.core.spellm import META_FILE
from spellm_exp.training.distill import distil

log = logging.getLogger(__name__)
SUMMARY_FILE = "summary.json"


class RunMismatchError(ValueError):
    """A finished run folder whose SpeLLM is not the one the config asks for."""


def is_finished(run_dir: Path) -> bool:
    return (run_dir / SUMMARY_FILE).exists() and (run_dir / "spellm" / META_FILE).exists()


def _charset_identity(charset: dict) -> dict:
    """What of a charset config decides the alphabet: its kind, size and whether it escapes, by the alphabet's
    own rule (bytes never does; runs written before `escape` existed did not)."""
    kind = CharsetKind(charset["kind"])
    escape = Alphabet(kind, (), bool(charset.get("escape", False))).escape
    return {"escape": escape, "kind": kind.value, "size": charset["size"]}


def check_same_output_layer(summary: dict, cfg: DictConfig, run_dir: Path) -> None:
    """A finished run is reused only for the alphabet and k it was distilled with; anything else fails here,
    before any evaluation, and says what to do."""
    stored = summary.get("provenance", {}).get("config", {})
    for key in ("charset", "k"):
        had, wanted = stored.get(key), cfg[key]
        if key == "charset" and had is not None:
            had, wanted = _charset_identity(had), _charset_identity(OmegaConf.to_container(wanted, resolve=True))
        if had is not None and had != wanted:
            raise RunMismatchError(
                f"{run_dir} holds a SpeLLM distilled with {key}={had}, but this config asks for {key}={wanted}. "
                f"Move or delete that folder to distil a new one, or set paths.output_dir to another folder.")


def reuse_resume_or_distil(cfg: DictConfig, run_dir: Path) -> dict:
    """The training summary of the run in `run_dir`: read back when it finished, else distilled now as `cfg`
    says, going on from its last checkpoint when an earlier attempt was interrupted."""
    if is_finished(run_dir):
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        check_same_output_layer(summary, cfg, run_dir)
        log.info("reusing %s", run_dir)
        return summary
    if (run_dir / "checkpoints" / "last.ckpt").exists():
        cfg = cfg.copy()
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
