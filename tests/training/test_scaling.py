"""Scale-out: the trainer configs, the FSDP wrap policy, and a real 2-process DDP run on CPU (gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp.wrap import _Policy

from spellm_exp.core.spellm import SpeLLM
from spellm_exp.teachers import TINY_MODELS, load_teacher
from spellm_exp.training.distill import ConfigError, distil
from spellm_exp.training.distributed import wrap_decoder_layers

from ..conftest import compose_train as _compose

TINY_RUN = ["model=tiny_llama", "k=4", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "data.max_chars_per_source=20000",
            "data.block_size=32", "data.val_blocks=4", "trainer.enable_progress_bar=false"]


@pytest.mark.parametrize("name,expected", [
    ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true", "strategy": "auto"}),
    ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed", "strategy": "auto"}),
    ("ddp", {"accelerator": "gpu", "devices": -1, "precision": "bf16-mixed", "strategy": "ddp"}),
])
def test_trainer_configs_compose_on_the_cpu_defaults(name, expected):
    trainer = _compose(f"trainer={name}").trainer
    assert {key: trainer[key] for key in expected} == expected
    # what every config shares with cpu.yaml, the profile's settings included
    assert trainer.max_steps == 150 and trainer.gradient_clip_val == 1.0
    assert trainer.use_distributed_sampler is False  # the data module shards its own batches
    overridden = _compose(f"trainer={name}", "trainer.devices=8", "trainer.num_nodes=2").trainer
    assert (overridden.devices, overridden.num_nodes) == (8, 2)


def test_fsdp_config_builds_lightnings_strategy_with_one_unit_per_decoder_block():
    trainer = _compose("trainer=fsdp", "trainer.devices=8").trainer
    assert (trainer.accelerator, trainer.devices, trainer.precision) == ("gpu", 8, "bf16-mixed")
    strategy = instantiate(trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy is wrap_decoder_layers or isinstance(policy, _Policy)
    assert strategy.kwargs["use_orig_params"]  # frozen backbone and trainable heads share FSDP units


@pytest.mark.parametrize("name", TINY_MODELS)
def test_the_wrap_policy_picks_exactly_the_decoder_blocks(name, tiny_teacher):
    model = tiny_teacher(name).model
    wrapped = [m for m in model.modules() if wrap_decoder_layers(m, recurse=False, nonwrapped_numel=0)]
    assert len(wrapped) == model.config.num_hidden_layers == 2
    assert {type(m) for m in wrapped} == {type(model.model.layers[0])}
    assert wrap_decoder_layers(model, recurse=True, nonwrapped_numel=0)  # descends into everything


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_gpu_trainer_without_cuda_fails_before_loading_and_names_the_fix(tmp_path, monkeypatch):
    import spellm_exp.training.distill as train_module

    monkeypatch.setattr(train_module, "load_teacher", pytest.fail)
    with pytest.raises(ConfigError, match=r"needs a CUDA GPU.*Use trainer=cpu"):
        distil(_compose("trainer=gpu", *TINY_RUN), tmp_path)


def _train_command(cache_dir, *overrides, flags=()):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "spellm_exp.train", *flags, *TINY_RUN, f"paths.cache_dir={cache_dir}",
               *overrides]
    return command, env


def test_two_ddp_processes_on_cpu_equal_one_process_over_the_same_global_batch(cache_dir, tmp_path):
    """gloo DDP, 2 ranks x 2 blocks against 1 process x 4 blocks: the same global batches (the data module
    shards them), the same averaged gradients, so the same heads; and an interrupted DDP run resumes to them."""
    ddp_dir = tmp_path / "ddp"
    ddp_overrides = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.devices=2",
                     "data.batch_size=2"]
    command, env = _train_command(cache_dir, *ddp_overrides, f"hydra.run.dir={ddp_dir}")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    single = distil(_compose(*TINY_RUN, "data.batch_size=4", f"paths.cache_dir={cache_dir}"), tmp_path / "single")

    summary = json.loads((ddp_dir / "summary.json").read_text())
    assert summary["devices"] == {"accelerator": "CPUAccelerator", "strategy": "DDPStrategy", "world_size": 2,
                                  "precision": "32-true"}
    # both ranks' final weights, gathered at the end of fit: identical
    assert summary["replicas"] == {"world_size": 2, "max_digest_diff": 0.0}
    assert summary["tokens_seen"] == single["tokens_seen"] == 4 * 4 * 32
    assert (ddp_dir / "train_ddp_process_1.log").exists()  # rank 1 ran as its own process
    ddp_heads = SpeLLM.load(ddp_dir / "spellm", cache_dir=cache_dir).heads
    single_spellm = SpeLLM.load(tmp_path / "single" / "spellm", cache_dir=cache_dir)
    single_heads = single_spellm.heads
    start = SpeLLM.build(load_teacher(name="tiny_llama", cache_dir=cache_dir), single_spellm.alphabet, 4).heads
    assert not torch.equal(single_heads.weight, start.weight)  # the heads did train
    torch.testing.assert_close(ddp_heads.weight, single_heads.weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ddp_heads.bias, single_heads.bias, rtol=1e-5, atol=1e-6)

    # interrupted after 2 steps, resumed from its checkpoint by both ranks: the same heads as straight through
    resumed_dir = tmp_path / "resumed"
    for steps, resume in ((2, []), (4, ["ckpt_path=last"])):
        command, env = _train_command(cache_dir, *ddp_overrides, f"trainer.max_steps={steps}",
                                      "checkpoint.every_n_train_steps=2", f"hydra.run.dir={resumed_dir}", *resume)
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        if steps == 2:  # leave the folder a 4-step run killed after its step-2 checkpoint leaves: its own record
            record = json.loads((resumed_dir / "run.json").read_text())
            record["config"]["trainer"]["max_steps"], record["status"] = 4, "running"
            (resumed_dir / "run.json").write_text(json.dumps(record))
            (resumed_dir / "summary.json").unlink()
    assert json.loads((resumed_dir / "summary.json").read_text())["steps"] == 4
    resumed_heads = SpeLLM.load(resumed_dir / "spellm", cache_dir=cache_dir).heads
    torch.testing.assert_close(resumed_heads.weight, ddp_heads.weight)


def test_multi_device_inside_a_multirun_is_refused_before_any_work(cache_dir, tmp_path):
    command, env = _train_command(cache_dir, "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
                                  "trainer.devices=2", "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep",
                                  "hydra.sweep.subdir=${hydra.job.num}", flags=["-m"])
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "inside a Hydra multirun (-m)" in result.stderr and "torchrun" in result.stderr
    assert not list((tmp_path / "sweep").rglob("summary.json"))


def test_ranks_with_different_spelling_tables_are_stopped_before_any_step():
    from spellm_exp.training.distributed import check_same_on_every_rank

    def gather_from_two_ranks(other: str):
        return lambda mine: torch.stack([mine, torch.tensor([int(other[:15], 16)])])

    check_same_on_every_rank("tables", "ab" * 32, gather_from_two_ranks("ab" * 32), torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"different tables \(2 versions\).*same paths.cache_dir"):
        check_same_on_every_rank("tables", "ab" * 32, gather_from_two_ranks("cd" * 32), torch.device("cpu"))


def test_a_bf16_mixed_run_keeps_fp32_weights_and_a_finite_loss(cache_dir, tmp_path):
    """trainer=gpu's precision, here on the CPU's autocast: the same code path as on a GPU."""
    import math

    summary = distil(_compose(*TINY_RUN, "data.batch_size=2", "trainer.precision=bf16-mixed",
                           f"paths.cache_dir={cache_dir}"), tmp_path)
    assert summary["devices"]["precision"] == "bf16-mixed" and summary["steps"] == 4
    assert math.isfinite(summary["val"]["val/kl"]) and summary["val"]["val/kl"] > 0
    heads = SpeLLM.load(tmp_path / "spellm", cache_dir=cache_dir).heads
    assert heads.weight.dtype == torch.float32
