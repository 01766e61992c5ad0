"""Every head type distils end to end on a tiny teacher: the loss falls, the checkpoint records the type."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from spellm_exp.config import HeadKind
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.training.distill import ConfigError, check_train_config, distil

from ..conftest import compose_train as _compose

HEADS = {"linear": ["heads=linear"], "mlp": ["heads=mlp", "heads.trunk_multiple=1"],
         "mixture": ["heads=mixture", "heads.components=2"],
         "autoregressive": ["heads=autoregressive", "heads.decoder_size=16"],
         "shortlist": ["heads=shortlist", "heads.shortlist=64"],
         "shortlist,rest_outside": ["heads=shortlist", "heads.shortlist=64", "heads.rest_outside=0.01"],
         "shortlist,exact_rest": ["heads=shortlist", "heads.shortlist=64", "loss.exact_rest=true"],
         "shortlist,context_tokens": ["heads=shortlist", "heads.shortlist=64", "heads.context_tokens=true"],
         "shortlist,tail": ["heads=shortlist", "heads.shortlist=64", "heads.tail_rank=8", "heads.exact_rows=16"]}


SHORT_RUN = ("model=tiny_llama", "k=4", "trainer.max_steps=12", "trainer.val_check_interval=12",
             "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "data.max_chars_per_source=20000",
             "data.block_size=32", "data.batch_size=4", "data.val_blocks=4", "train.warmup_steps=1",
             "train.lr=1e-2", "loss.top_k=8", "trainer.enable_progress_bar=false")


@pytest.mark.parametrize("kind", list(HEADS))
def test_a_short_training_run_lowers_the_loss_and_exports_the_type(kind, cache_dir, tmp_path):
    cfg = _compose(*SHORT_RUN, f"paths.cache_dir={cache_dir}", *HEADS[kind])
    summary = distil(cfg, tmp_path)
    kind, variant = (kind.split(",") + [""])[:2]
    renormalised = variant == "rest_outside"
    assert summary["heads"]["kind"] == kind and (summary["heads"].get("rest_outside") == 0.01) == renormalised
    assert summary["heads"].get("context_tokens", False) == (variant == "context_tokens")
    assert (summary["heads"].get("tail_rank"), summary["heads"].get("exact_rows")) == \
        ((8, 16) if variant == "tail" else (None, None))
    assert summary["heads"]["loss_objective"] == ("marginal" if kind in ("linear", "mlp") else "token")
    assert summary["heads"]["kind"] != "shortlist" or summary["heads"]["shortlist"] == 64
    losses = pd.read_csv(tmp_path / "csv" / "metrics.csv")["train/loss"].dropna().to_numpy()
    if renormalised:  # the tiny teachers are near uniform, and so is a rest spread over its vocabulary strings
        assert len(losses) == 12 and losses.max() < 0.5  # the plain rest starts ~8 nats away (Sigma^k, not V)
    else:
        assert len(losses) == 12 and losses[-3:].mean() < losses[:3].mean()
    meta = json.loads((tmp_path / "spellm" / "spellm.json").read_text())
    assert meta["heads"]["kind"] == kind
    loaded = SpeLLM.load(tmp_path / "spellm", cache_dir=cache_dir)
    assert loaded.heads.kind is HeadKind(kind)
    if variant == "tail":  # the first 16 rows stay exact; the other 48 are a trained rank-8 product
        assert loaded.heads.weight.shape == (16, 64) and loaded.heads.tail_out.shape == (48, 8)
    if kind != "linear":
        assert summary["val"]["val/token_kl" if kind in ("mixture", "autoregressive", "shortlist") else "val/kl"] > 0
    # the ceiling's token KL on the same validation positions: for factorised heads the product of the teacher's
    # marginals, the best any factorised student can do (so never above the student's); none for autoregressive
    ceiling = summary["val"].get("val/ceiling_token_kl")
    if kind in ("autoregressive", "shortlist"):
        assert ceiling is None
    elif kind == "mixture":
        assert ceiling is not None and abs(ceiling) < summary["val"]["val/token_kl"]
    else:
        assert 0 < ceiling <= summary["val"]["val/token_kl"] + 1e-5


@pytest.mark.parametrize("overrides,message", [
    (["heads=mixture", "loss.objective=marginal"], r"loss.objective=marginal fits only heads that factorise"),
    (["heads=mixture", "heads.components=0"], r"heads.components=0 must be >= 1"),
    (["heads=shortlist", "heads.exact_rows=4"], r"heads.exact_rows=4 is read with heads.tail_rank > 0 only"),
    (["heads=shortlist", "heads.shortlist=64", "heads.tail_rank=8", "heads.exact_rows=64"],
     r"heads.exact_rows=64: use 0..63"),
    (["heads=linear", "heads.tail_rank=8"], r"heads.tail_rank and heads.exact_rows factor a shortlist's rows"),
    (["heads.components=8"], r"heads.components=8: not read by the head type as configured \({'kind': 'linear'}\)"),
    (["heads=shortlist", "heads.decoder_size=256"], r"heads.decoder_size=256: not read by the head type as configured"),
    (["heads=mlp", "heads.shortlist=64"], r"heads.shortlist=64: not read .*'trunk_multiple': 4"),
    (["heads=shortlist", "heads.tail_rank=64", "heads.exact_rows=8", "train.freeze_heads=[weight,tail]"],
     r"train.freeze_heads: shortlist-4096,tail 8\+rank-64 heads have no part 'tail'; theirs: bias, gate, linear, "
     r"tail_in, tail_out, weight"),
    (["heads=autoregressive", "loss.top_k=0"], r"loss.top_k=0 must be >= 1"),
    (["heads=autoregressive", "loss.temperature=2"], r"loss.temperature=2.0: heads=autoregressive has no"),
    (["heads=shortlist", "heads.rest=mixture"], r"heads.rest=mixture: the shortlist's rest is spelled by linear, mlp, autoregressive heads"),
    (["heads=shortlist", "heads.rest=autoregressive", "heads.decoder_size=0"], r"heads.decoder_size=0 must be >= 1"),
    (["heads=shortlist", "heads.rest=mlp", "heads.trunk_multiple=0"], r"heads.trunk_multiple=0 must be >= 1"),
    (["heads=shortlist", "heads.rest_outside=1.5"], r"heads.rest_outside=1.5: use a share in \(0, 1\]"),
    (["heads=shortlist", "heads.rest=autoregressive", "heads.rest_outside=0.1"], r"needs a rest that is a product"),
    (["heads=linear", "loss.exact_rest=true"], r"loss.exact_rest=true is the token objective's exact part"),
    (["heads=shortlist", "heads.rest=autoregressive", "loss.exact_rest=true"], r"heads.rest=autoregressive, objective"),
    (["heads=shortlist", "train.freeze_heads=[gate,nope]"], r"train.freeze_heads: shortlist-4096 heads have no part 'nope'; theirs: bias, gate, linear, weight"),
    (["heads=mixture", "heads.context_tokens=true"], r"heads.context_tokens=true .* needs heads=shortlist"),
    (["heads=shortlist", "heads.context_tokens=true", "loss.exact_rest=true"], r"set loss.exact_rest=false"),
    (["train.init_from=/no/such/run"], r"train.init_from=/no/such/run is not a SpeLLM checkpoint"),
])
def test_bad_head_settings_fail_before_any_model_loads(overrides, message, monkeypatch):
    import spellm_exp.training.distill as train_module

    monkeypatch.setattr(train_module, "load_teacher", pytest.fail)
    with pytest.raises(ConfigError, match=message):
        check_train_config(_compose(*overrides))


def test_a_shortlist_with_an_autoregressive_rest_trains_on_top_of_a_trained_shortlist(cache_dir, tmp_path):
    """heads.rest=autoregressive with train.init_from=<a shortlist run>: the run starts from that run's tokens,
    rows, gate and linear heads (the decoder at zero) and records the rest in its checkpoint."""
    first = distil(_compose(*SHORT_RUN, f"paths.cache_dir={cache_dir}", *HEADS["shortlist"]), tmp_path / "linear")
    second = distil(_compose(*SHORT_RUN, f"paths.cache_dir={cache_dir}", *HEADS["shortlist"],
                             "heads.rest=autoregressive", "heads.decoder_size=16",
                             f"train.init_from={tmp_path / 'linear'}"), tmp_path / "decoder")
    assert second["heads"]["rest"] == "autoregressive" and second["heads"]["decoder_size"] == 16
    assert "rest" not in first["heads"]
    losses = pd.read_csv(tmp_path / "decoder" / "csv" / "metrics.csv")["train/loss"].dropna().to_numpy()
    assert len(losses) == 12 and np.isfinite(losses).all()
    # it started where the first run ended: its first losses are near the first run's last ones, not its first
    first_losses = pd.read_csv(tmp_path / "linear" / "csv" / "metrics.csv")["train/loss"].dropna().to_numpy()
    assert abs(losses[:3].mean() - first_losses[-3:].mean()) < abs(losses[:3].mean() - first_losses[:3].mean())
    loaded = SpeLLM.load(tmp_path / "decoder" / "spellm", cache_dir=cache_dir)
    original = SpeLLM.load(tmp_path / "linear" / "spellm", cache_dir=cache_dir)
    assert loaded.heads.rest is HeadKind.autoregressive
    assert torch.equal(loaded.heads.token_ids, original.heads.token_ids)


def test_an_unknown_head_type_is_rejected_while_composing():
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"heads/transformer"):
        _compose("heads=transformer")


def test_token_objective_on_linear_heads_trains_the_same_direction_as_the_marginal_one(cache_dir, tmp_path):
    """For linear heads the token KL is the marginal loss x k plus a constant: one SGD-free check, the
    gradients are proportional (k) at the same weights."""
    from spellm_exp.core.charset import Alphabet
    from spellm_exp.core.losses import distillation_loss, head_marginals
    from spellm_exp.teachers import load_teacher

    teacher = load_teacher(name="tiny_llama", cache_dir=cache_dir)
    spellm = SpeLLM.build(teacher, Alphabet.ascii_(), k=4)
    ids = teacher.tokenizer(["The cat sat on the mat."], return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = spellm.backbone(ids)[0][0]
        targets = head_marginals(spellm.teacher_logits(hidden), spellm.spelling_table, spellm.spellable,
                                 spellm.alphabet.size)
    grads = {}
    for objective in ("marginal", "token"):
        spellm.heads.zero_grad()
        parts = distillation_loss(spellm.heads(hidden), targets, objective=objective, table=spellm.spelling_table)
        parts.total.backward()
        grads[objective] = spellm.heads.weight.grad.clone()
    torch.testing.assert_close(grads["token"], 4 * grads["marginal"], atol=1e-6, rtol=1e-4)


def test_frozen_head_parts_stay_as_they_start_while_the_rest_trains(cache_dir, tmp_path):
    """train.freeze_heads: two runs at different rates end with the same shortlist rows and gate (their start)
    and different rest heads."""
    frozen = ("heads=shortlist", "heads.shortlist=64", "train.freeze_heads=[weight,bias,gate]")
    heads = {}
    for lr in ("1e-2", "1e-1"):
        distil(_compose(*SHORT_RUN, f"paths.cache_dir={cache_dir}", *frozen, f"train.lr={lr}"), tmp_path / lr)
        heads[lr] = SpeLLM.load(tmp_path / lr / "spellm", cache_dir=cache_dir).heads
    slow, fast = heads["1e-2"], heads["1e-1"]
    for name in ("weight", "bias"):
        assert torch.equal(getattr(slow, name), getattr(fast, name)), name
    assert torch.equal(slow.gate.weight, fast.gate.weight) and torch.equal(slow.gate.bias, fast.gate.bias)
    assert not torch.equal(slow.linear.weight, fast.linear.weight)


def test_zero_steps_from_a_trained_run_export_its_heads_with_the_new_settings(cache_dir, tmp_path):
    """trainer.max_steps=0 with train.init_from: an evaluation-only variant, e.g. the same trained shortlist scoring
    the seen tokens too (heads.context_tokens adds no parameters)."""
    distil(_compose(*SHORT_RUN, f"paths.cache_dir={cache_dir}", *HEADS["shortlist"]), tmp_path / "trained")
    summary = distil(_compose(*SHORT_RUN, f"paths.cache_dir={cache_dir}", *HEADS["shortlist,context_tokens"],
                              "trainer.max_steps=0", f"train.init_from={tmp_path / 'trained'}"), tmp_path / "seen")
    assert summary["steps"] == 0 and summary["heads"]["context_tokens"] is True
    trained = SpeLLM.load(tmp_path / "trained" / "spellm", cache_dir=cache_dir)
    seen = SpeLLM.load(tmp_path / "seen" / "spellm", cache_dir=cache_dir)
    assert seen.heads.context_tokens and not trained.heads.context_tokens
    state = trained.heads.state_dict()
    assert all(torch.equal(value, state[name]) for name, value in seen.heads.state_dict().items())
