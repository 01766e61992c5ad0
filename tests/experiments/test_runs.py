"""Reusing a finished run: only when its resolved training config and its training code are what is asked for."""

import json

import pytest
from omegaconf import open_dict

import spellm_exp.training.run_folder as run_folder
from spellm_exp.experiments.runs import RunMismatchError, reuse_resume_or_distil

from ..conftest import compose_train


def _cfg(cache_dir, *overrides):
    return compose_train("model=tiny_llama", "k=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
                         "trainer.limit_val_batches=1", "data.max_chars_per_source=20000", "data.block_size=32",
                         "data.batch_size=2", "data.val_blocks=4", "trainer.enable_progress_bar=false",
                         f"paths.cache_dir={cache_dir}", *overrides)


@pytest.fixture(scope="module")
def finished_run(cache_dir, tmp_path_factory):
    """A finished tiny run (what `trained_run` keeps under outputs/train/<experiment>_<profile>_<head type>)."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    reuse_resume_or_distil(_cfg(cache_dir), run_dir)
    return run_dir


def test_the_same_config_and_code_reuse_the_run(finished_run, cache_dir, monkeypatch):
    import spellm_exp.experiments.runs as runs

    monkeypatch.setattr(runs, "distil", pytest.fail)  # reused: nothing trains
    summary = reuse_resume_or_distil(_cfg(cache_dir, "paths.output_dir=/elsewhere"), finished_run)
    assert summary["steps"] == 2 and summary["k"] == 4


@pytest.mark.parametrize("override,named", [
    ("heads=shortlist", "heads.kind"),  # what editing a head type's overrides in conf/table1.yaml does
    ("data.max_chars_per_source=30000", "data.max_chars_per_source: 20000 -> 30000"),
    ("trainer.max_steps=3", "trainer.max_steps: 2 -> 3"),
    ("seed=1", "seed: 0 -> 1"),
    ("k=3", "k: 4 -> 3"),
    ("charset.size=32", "charset.size"),
    ("model=tiny_qwen", "model.name"),
    ("train.freeze_heads=[bias]", "train.freeze_heads"),
])
def test_a_changed_setting_is_refused_and_named(override, named, finished_run, cache_dir):
    with pytest.raises(RunMismatchError, match=rf"distilled otherwise than this config asks \(.*{named}.*Move or "
                                               "delete"):
        reuse_resume_or_distil(_cfg(cache_dir, override), finished_run)


def test_changed_training_code_is_refused_and_named(finished_run, cache_dir, monkeypatch):
    monkeypatch.setattr(run_folder, "stage_code_version", lambda: "edited")
    with pytest.raises(RunMismatchError, match=r"the code of core/teachers/data/training: [0-9a-f]{16} -> edited"):
        reuse_resume_or_distil(_cfg(cache_dir), finished_run)


def test_a_run_without_a_record_is_not_reused_by_its_folder_name(finished_run, cache_dir, tmp_path):
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(finished_run, legacy)
    (legacy / "run.json").unlink()  # what a run written before run records looks like
    with pytest.raises(RunMismatchError, match=r"without a run.json .*nothing shows which config and code made it"):
        reuse_resume_or_distil(_cfg(cache_dir), legacy)


def test_an_interrupted_attempt_is_resumed_as_the_same_run(cache_dir, tmp_path):
    cfg = _cfg(cache_dir)
    run_dir = tmp_path / "run"
    with run_folder.claimed_run_folder(run_dir, cfg, resume=False):
        pass  # claimed, then killed before its first checkpoint: a record, no checkpoint, no summary
    (run_dir / "csv").mkdir()
    (run_dir / "csv" / "metrics.csv").write_text("step,train/loss\n0,9.9\n")
    summary = reuse_resume_or_distil(cfg, run_dir)  # starts again from step 0, in place
    assert summary["steps"] == 2
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    other = cfg.copy()
    with open_dict(other):
        other.k = 3
    with pytest.raises(RunMismatchError, match="k: 4 -> 3"):
        reuse_resume_or_distil(other, run_dir)
