"""Distillation end to end: composed Hydra configs, every trainable mode, resume, early errors."""

import json
import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import open_dict

from spellm_exp.config import CONFIG_DIR, compose_config
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.teachers import TINY_MODELS
from spellm_exp.training.distill import ConfigError, check_train_config, distil
from spellm_exp.training.run_folder import RunFolderError

from ..conftest import compose_train as _compose

CONF = Path(CONFIG_DIR)


def _tiny(cache_dir, tmp_path, *overrides):
    return _compose("debug=fdr", "k=4", f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}", *overrides)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_fast_dev_run_on_every_tiny_family(name, cache_dir, tmp_path):
    summary = distil(_tiny(cache_dir, tmp_path, f"model={name}"), tmp_path)
    assert summary["steps"] == 1 and summary["teacher"]["name"] == name
    assert set(summary["val"]) >= {"val/loss", "val/kl", "val/head00/agree_teacher", "val/head03/entropy",
                                   "val/head01/agree_teacher_chars", "val/agree_teacher_chars"}
    # pooled over the epoch's (position, head) pairs whose teacher top symbol is a character
    assert 0.0 <= summary["val"]["val/agree_teacher_chars"] <= 1.0
    loaded = SpeLLM.load(tmp_path / "spellm", cache_dir=cache_dir)
    assert loaded.k == 4
    assert json.loads((tmp_path / "summary.json").read_text())["k"] == 4


@pytest.mark.parametrize("trainable", ["heads", "lora", "full"])
def test_every_trainable_mode_trains_and_exports(trainable, cache_dir, tmp_path):
    cfg = _tiny(cache_dir, tmp_path, "model=tiny_qwen", f"train.trainable={trainable}")
    summary = distil(cfg, tmp_path)
    assert summary["trainable"] == trainable and summary["steps"] == 1
    meta = json.loads((tmp_path / "spellm" / "spellm.json").read_text())
    assert meta["backbone"] == {"heads": "frozen", "lora": "lora", "full": "trained"}[trainable]
    SpeLLM.load(tmp_path / "spellm", cache_dir=cache_dir)


def test_heads_mode_leaves_the_backbone_untouched(cache_dir, tmp_path):
    from spellm_exp.teachers import load_teacher

    cfg = _compose("model=tiny_llama", "k=4", "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1",
                   "trainer.limit_val_batches=1", "data.max_chars_per_source=20000", "data.block_size=32",
                   "data.batch_size=2", "data.val_blocks=4", "trainer.enable_progress_bar=false",
                   f"paths.cache_dir={cache_dir}")
    distil(cfg, tmp_path)
    loaded = SpeLLM.load(tmp_path / "spellm", cache_dir=cache_dir)
    fresh = load_teacher(name="tiny_llama", cache_dir=cache_dir)
    for (name, a), (_, b) in zip(loaded.causal_lm.named_parameters(), fresh.model.named_parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(loaded.heads.weight, SpeLLM.build(fresh, loaded.alphabet, 4).heads.weight)
    metrics = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    assert {"train/loss", "train/tokens_per_s", "val/kl", "val/head00/agree_truth"} <= set(metrics.columns)


def _resume_cfg(cache_dir, steps):
    return _compose("model=tiny_llama", "k=4", f"trainer.max_steps={steps}", "trainer.val_check_interval=2",
                    "trainer.limit_val_batches=1", "data.max_chars_per_source=20000", "data.block_size=32",
                    "data.batch_size=2", "data.val_blocks=4", "checkpoint.every_n_train_steps=2",
                    "trainer.enable_progress_bar=false", f"paths.cache_dir={cache_dir}")


def test_resume_without_a_checkpoint_names_the_fix(cache_dir, tmp_path):
    cfg = _tiny(cache_dir, tmp_path, "model=tiny_llama", "ckpt_path=last")
    with pytest.raises(RunFolderError, match=r"found no run to resume in .*hydra.run.dir=<the interrupted run.s folder>"):
        distil(cfg, tmp_path)


@pytest.mark.parametrize("overrides,message", [
    (["k=0"], r"k=0: the number of character heads must be an integer >= 1"),
    (["charset.size=1"], r"charset.size=1: .*use charset.size >= 2"),
    (["model.name=nonexistent"], r"Unknown model 'nonexistent'"),
    (["loss.temperature=0"], r"loss.temperature must be > 0"),
    (["data.sources=[wikipedia]"], r"data.sources=\['wikipedia'\]: choose one or more of"),
    (["model.attn_implementation=flash"], r"model.attn_implementation=flash is not one of \['auto', 'sdpa', 'eager'"),
])
def test_bad_overrides_fail_before_any_model_loads(overrides, message, monkeypatch):
    import spellm_exp.training.distill as train_module

    monkeypatch.setattr(train_module, "load_teacher", pytest.fail)
    with pytest.raises(ConfigError, match=message):
        check_train_config(_compose(*overrides))


@pytest.mark.parametrize("override,message", [
    ("train.trainable=everything", r"Invalid value 'everything', expected one of \[heads, lora, full\]"),
    ("k=four", r"Value 'four' of type 'str' could not be converted to Integer"),
    ("heads_init=zeros", r"expected one of \[unembedding_mean, random\]"),
    ("train.lr_max=1", r"Key 'lr_max' not in 'TrainConfig'"),
])
def test_a_bad_key_or_value_is_rejected_by_the_schema_while_composing(override, message):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as caught:
        _compose(override)
    assert re.search(message, str(caught.value.__cause__))


def test_unknown_model_group_is_rejected_by_hydra():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"model/nonexistent"):
        _compose("model=nonexistent")


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes_and_runs_one_batch(experiment, cache_dir, tmp_path, monkeypatch):
    # a sweep experiment (it sets the `sweep` node) belongs to `spellm_exp.sweep`, whose config is train.yaml's plus
    # that node; its training is the same
    command = "sweep" if "\nsweep:" in (CONF / "experiment" / f"{experiment}.yaml").read_text() else "train"
    cfg = compose_config(command, [f"experiment={experiment}", "debug=fdr"])
    check_train_config(cfg)
    assert cfg.k >= 1
    # the real teachers are the slow part: run the same experiment on the tiny model of its family
    tiny = {"llama": "tiny_llama", "gemma": "tiny_gemma"}[cfg.model.name]
    with open_dict(cfg):
        cfg.model.name = tiny
        cfg.paths.cache_dir = cache_dir
    assert distil(cfg, tmp_path)["steps"] == 1


def test_multirun_jobs_get_their_own_folders(cache_dir, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spellm_exp.train", "-m", "model=tiny_llama", "debug=fdr", "k=2,3",
         f"paths.cache_dir={cache_dir}", f"hydra.sweep.dir={tmp_path}/sweep"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(p.name for p in Path(tmp_path / "sweep").iterdir() if p.is_dir())
    assert jobs == ["debug=fdr,k=2,model=tiny_llama", "debug=fdr,k=3,model=tiny_llama"]
    for job, k in zip(jobs, (2, 3)):
        assert json.loads((tmp_path / "sweep" / job / "summary.json").read_text())["k"] == k


def test_wandb_logger_writes_an_offline_run_without_credentials(cache_dir, tmp_path, monkeypatch):
    from spellm_exp.training import loggers

    monkeypatch.setattr(loggers, "has_wandb_credentials", lambda: False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = _resume_cfg(cache_dir, 2)  # not fast_dev_run, which swaps loggers for a dummy
    cfg.logger = _compose("logger=wandb").logger
    try:
        distil(cfg, tmp_path)
    finally:
        from spellm_exp.training.loggers import finish_wandb

        finish_wandb()
        monkeypatch.delenv("WANDB_MODE", raising=False)  # WandbLogger(offline=True) sets it process-wide
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log_file = next(runs[0].glob("run-*.wandb"))  # the offline log that `wandb sync` uploads
    keys = (b"charset", b"tiny_llama", b"val/loss", b"k=4")
    deadline = time.monotonic() + 60
    while not all(key in log_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)  # wandb's service process may still be writing the file after finish() on a loaded machine
    record = log_file.read_bytes()
    for key in keys:
        assert key in record


def test_the_progress_bar_of_a_step_limited_run_shows_no_epoch_count():
    from types import SimpleNamespace

    from spellm_exp.training.callbacks import StepProgressBar

    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)  # trainer.max_epochs=-1: limited by steps (Lightning: "0/-2")
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"
