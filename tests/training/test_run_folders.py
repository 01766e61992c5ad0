"""A run folder belongs to one run: a busy folder is refused, a finished one is only resumed by the same run, a
diverged run exports nothing, and a resumed run keeps its earlier metrics and seconds."""

import dataclasses
import json
import os
import subprocess
import sys
import warnings

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from spellm_exp.core.spellm import SpeLLM
from spellm_exp.training.distill import distil
from spellm_exp.training.module import DistillModule, DivergedError
from spellm_exp.training.run_folder import RunFolderError, claimed_run_folder

from ..conftest import compose_train


def _cfg(cache_dir, *overrides):
    return compose_train("model=tiny_llama", "k=4", "trainer.max_steps=6", "trainer.val_check_interval=2",
                         "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
                         "data.max_chars_per_source=20000", "data.block_size=32", "data.batch_size=2",
                         "data.val_blocks=4", "checkpoint.every_n_train_steps=2",
                         "trainer.enable_progress_bar=false", f"paths.cache_dir={cache_dir}", *overrides)


def _resumed(cfg):
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.ckpt_path = "last"
    return cfg


def _train_command(cache_dir, run_dir, *overrides, env=None):
    args = [sys.executable, "-m", "spellm_exp.train", "model=tiny_llama", "k=4", "trainer.max_steps=2",
            "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.max_chars_per_source=20000",
            "data.block_size=32", "data.batch_size=2", "data.val_blocks=4", "trainer.enable_progress_bar=false",
            f"paths.cache_dir={cache_dir}", f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


# --- diverged runs --------------------------------------------------------------------------------------------
def test_a_diverged_run_stops_names_its_step_and_loss_parts_and_exports_nothing(cache_dir, tmp_path):
    with pytest.raises(DivergedError, match=r"training diverged at step \d+: the loss is not finite .*non-finite "
                                            r"parts: kl.*nothing was exported\. Lower train\.lr"):
        distil(_cfg(cache_dir, "train.lr=1e38"), tmp_path)
    assert not (tmp_path / "spellm").exists() and not (tmp_path / "summary.json").exists()
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "diverged"


def test_a_diverged_run_removes_the_export_of_its_earlier_steps(cache_dir, tmp_path, monkeypatch):
    original = DistillModule._step

    def diverging(self, batch, stage):  # fine for 3 steps (exported at step 2), then NaN
        parts = original(self, batch, stage)
        diverged = stage == "train" and self.trainer.global_step >= 3
        return dataclasses.replace(parts, total=parts.total * float("nan")) if diverged else parts

    monkeypatch.setattr(DistillModule, "_step", diverging)
    with pytest.raises(DivergedError, match="at step 3"):
        distil(_cfg(cache_dir), tmp_path)
    assert not (tmp_path / "spellm").exists()


def test_the_train_command_prints_a_divergence_in_one_line(cache_dir, tmp_path):
    result = _train_command(cache_dir, tmp_path / "run", "train.lr=1e38")
    assert result.returncode == 1
    assert "error: training diverged at step" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


# --- one run per folder ---------------------------------------------------------------------------------------
def test_a_folder_another_run_is_writing_is_refused_and_keeps_that_runs_files(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    first = _cfg(cache_dir, "k=8")
    with claimed_run_folder(run_dir, first, resume=False):  # the first run, still writing
        with pytest.raises(RunFolderError, match=r"is being written by another run \(process \d+\).*hydra\.run\.dir="):
            distil(_cfg(cache_dir), run_dir)
        result = _train_command(cache_dir, run_dir)  # the same from a second process, as `train` runs it
        assert result.returncode == 1, result.stderr[-2000:]
        assert "is being written by another run" in result.stderr and "Traceback" not in result.stderr
    assert json.loads((run_dir / "run.json").read_text())["config"]["k"] == 8  # still the first run's
    assert not (run_dir / ".hydra").exists() and not (run_dir / "csv").exists()


def test_a_finished_folder_is_refused_and_only_its_own_run_resumes_it(cache_dir, tmp_path):
    cfg = _cfg(cache_dir, "trainer.max_steps=2")
    distil(cfg, tmp_path)
    checkpoint = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(RunFolderError, match=r"already holds a run \(.*summary\.json.*\): resume that run with its "
                                             r"own overrides plus ckpt_path=last .*hydra\.run\.dir=<a new folder>"):
        distil(_cfg(cache_dir, "trainer.max_steps=2", "k=2"), tmp_path)
    with pytest.raises(RunFolderError, match=r"ckpt_path=last: .* holds a run with another config \(k: 4 -> 2\)"):
        distil(_resumed(_cfg(cache_dir, "trainer.max_steps=2", "k=2")), tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == checkpoint  # nothing was touched
    assert json.loads((tmp_path / "summary.json").read_text())["k"] == 4
    assert distil(_resumed(cfg), tmp_path)["steps"] == 2  # the run itself may go on


def test_the_train_command_refuses_a_finished_folder_in_one_line(cache_dir, tmp_path):
    assert _train_command(cache_dir, tmp_path / "run").returncode == 0
    hydra_config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    result = _train_command(cache_dir, tmp_path / "run", "k=2")
    assert result.returncode == 1
    assert "already holds a run" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text() == hydra_config
    debugging = _train_command(cache_dir, tmp_path / "run", "k=2", env={"SPELLM_TRACEBACK": "1"})
    assert "Traceback" in debugging.stderr and "RunFolderError" in debugging.stderr


def test_resuming_from_another_runs_checkpoint_names_the_mismatch(cache_dir, tmp_path):
    distil(_cfg(cache_dir, "trainer.max_steps=2"), tmp_path / "k4")
    from spellm_exp.core.spellm import CheckpointError

    other = _cfg(cache_dir, "trainer.max_steps=2", "k=2", f"ckpt_path={tmp_path / 'k4' / 'checkpoints' / 'last.ckpt'}")
    with pytest.raises(CheckpointError, match=r"was written by another run: other shapes: .*Resume with that run's own"):
        distil(other, tmp_path / "k2")


# --- resume ---------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def test_a_resumed_run_reaches_the_same_weights_and_keeps_its_metrics_and_seconds(cache_dir, tmp_path, monkeypatch):
    cfg = _cfg(cache_dir)
    distil(cfg, tmp_path / "straight")
    original = DistillModule.on_train_batch_start

    def interrupt_after_5(self, batch, batch_idx):  # killed in step 6, after the step-4 checkpoint
        if self.trainer.global_step == 5:
            raise Interrupted
        original(self, batch, batch_idx)

    monkeypatch.setattr(DistillModule, "on_train_batch_start", interrupt_after_5)
    with pytest.raises(Interrupted):
        distil(cfg, tmp_path / "interrupted")
    monkeypatch.setattr(DistillModule, "on_train_batch_start", original)
    first_rows = pd.read_csv(tmp_path / "interrupted" / "csv" / "metrics.csv")
    first_seconds = torch.load(tmp_path / "interrupted" / "checkpoints" / "last.ckpt", weights_only=False)
    first_seconds = next(v["seconds"] for k, v in first_seconds["callbacks"].items() if "TrainingClock" in k)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = distil(_resumed(cfg), tmp_path / "interrupted")
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert summary["steps"] == 6 and summary["seconds"] >= first_seconds > 0
    straight = SpeLLM.load(tmp_path / "straight" / "spellm", cache_dir=cache_dir).heads
    again = SpeLLM.load(tmp_path / "interrupted" / "spellm", cache_dir=cache_dir).heads
    assert torch.equal(again.weight, straight.weight) and torch.equal(again.bias, straight.bias)
    assert (tmp_path / "interrupted" / "checkpoints" / "last.ckpt").stat().st_size < 1_000_000  # heads only
    # every step's training row, each once: the earlier attempt's steps 0-3 kept, 4-5 logged again after the resume
    rows = pd.read_csv(tmp_path / "interrupted" / "csv" / "metrics.csv")
    straight_rows = pd.read_csv(tmp_path / "straight" / "csv" / "metrics.csv")
    trained = rows.dropna(subset=["train/loss"])
    assert list(trained["step"]) == list(straight_rows.dropna(subset=["train/loss"])["step"]) == [0, 1, 2, 3, 4, 5]
    assert set(first_rows.dropna(subset=["train/loss"])["step"]) <= set(trained["step"])
    torch.testing.assert_close(torch.tensor(trained["train/loss"].to_numpy()),
                               torch.tensor(straight_rows.dropna(subset=["train/loss"])["train/loss"].to_numpy()))
