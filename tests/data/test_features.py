"""The feature cache: lazily filled backbone outputs that make later heads-only runs skip the backbone."""

import pytest
import torch

from spellm_exp.core.spellm import SpeLLM
from spellm_exp.data.features import FeatureStore
from spellm_exp.training.distill import ConfigError, distil

from ..conftest import compose_train as _compose


def _blocks(n=6, t=3, d=2):
    return torch.arange(n * t * d, dtype=torch.float32).view(n, t, d)


def test_store_computes_each_block_once_and_persists(tmp_path):
    features, calls = _blocks(), []

    def compute(ids):  # "ids" here are block numbers broadcast over time, so rows are recognisable
        calls.append(ids[:, 0].tolist())
        return features[ids[:, 0]]

    ids = torch.arange(6).unsqueeze(1).expand(6, 3)
    store = FeatureStore(tmp_path, 6, 3, 2, key={"a": 1})
    got = store.get(torch.tensor([4, 1]), ids[[4, 1]], compute)
    assert torch.equal(got, features[[4, 1]]) and calls == [[4, 1]]
    got = store.get(torch.tensor([1, 2, 4]), ids[[1, 2, 4]], compute)
    assert torch.equal(got, features[[1, 2, 4]]) and calls == [[4, 1], [2]]  # only the missing block

    reopened = FeatureStore(tmp_path, 6, 3, 2, key={"a": 1})
    assert reopened.n_filled == 3
    assert torch.equal(reopened.get(torch.tensor([2]), ids[[2]], compute), features[[2]]) and len(calls) == 2


def test_store_rebuilds_when_its_key_or_shape_changes(tmp_path):
    FeatureStore(tmp_path, 6, 3, 2, key={"a": 1}).get(torch.tensor([0]), torch.zeros(1, 3, dtype=torch.long),
                                                       lambda ids: torch.ones(len(ids), 3, 2))
    assert FeatureStore(tmp_path, 6, 3, 2, key={"a": 1}).n_filled == 1
    assert FeatureStore(tmp_path, 6, 3, 2, key={"a": 2}).n_filled == 0
    assert FeatureStore(tmp_path, 7, 3, 2, key={"a": 2}).n_filled == 0


def _cfg(cache_dir, features_dir, *overrides):
    return _compose("model=tiny_llama", "k=4", "trainer.max_steps=4", "trainer.val_check_interval=2",
                    "trainer.limit_val_batches=1", "data.max_chars_per_source=20000", "data.block_size=32",
                    "data.batch_size=2", "data.val_blocks=4", "trainer.enable_progress_bar=false",
                    f"paths.cache_dir={cache_dir}", f"paths.features_dir={features_dir}", *overrides)


def test_cached_training_equals_plain_training_and_reuses_the_backbone(cache_dir, tmp_path, monkeypatch):
    plain = distil(_cfg(cache_dir, tmp_path / "features"), tmp_path / "plain")
    first = distil(_cfg(cache_dir, tmp_path / "features", "train.cache_features=true"), tmp_path / "first")

    backbone_calls = []
    original = SpeLLM.backbone
    monkeypatch.setattr(SpeLLM, "backbone", lambda self, *a, **kw: backbone_calls.append(1) or original(self, *a, **kw))
    # another alphabet and k on the same teacher and blocks: every batch comes from the cache
    second = distil(_cfg(cache_dir, tmp_path / "features", "train.cache_features=true", "k=6", "charset.size=16"),
                 tmp_path / "second")
    assert backbone_calls == [] and second["steps"] == 4

    assert first["val"]["val/kl"] == pytest.approx(plain["val"]["val/kl"], abs=1e-6)
    heads = {name: SpeLLM.load(tmp_path / name / "spellm", cache_dir=cache_dir).heads for name in ("plain", "first")}
    torch.testing.assert_close(heads["first"].weight, heads["plain"].weight, rtol=0, atol=1e-6)


def test_feature_cache_needs_the_heads_only_mode(cache_dir, tmp_path):
    cfg = _cfg(cache_dir, tmp_path, "train.cache_features=true", "train.trainable=lora")
    with pytest.raises(ConfigError, match="train.cache_features=true needs a frozen backbone"):
        distil(cfg, tmp_path)


def test_every_process_opens_the_store_once_after_the_one_that_creates_it(tmp_path):
    """Global rank 0 opens (and may create) the files in turn 0, each other node's first process in
    turn 1 (node-local caches), everyone else in turn 2; the turns are separated by barriers."""
    opened_in_turn = {}
    for global_rank, local_rank in [(0, 0), (1, 1), (2, 0), (3, 1)]:  # two nodes of two processes
        store = FeatureStore(tmp_path, 6, 3, 2, key={"a": 1})
        barriers = []
        store.open = lambda barriers=barriers, rank=global_rank: opened_in_turn.setdefault(rank, len(barriers))
        store.open_in_turn(global_rank, local_rank, lambda barriers=barriers: barriers.append(1))
        assert len(barriers) == 3  # every process passes the same barriers
    assert opened_in_turn == {0: 0, 2: 1, 1: 2, 3: 2}
