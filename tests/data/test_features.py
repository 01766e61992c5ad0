"""The feature cache: lazily filled backbone outputs that make later heads-only runs skip the backbone."""

import pytest
import torch

from spellm_exp.core.charset import PAD
from spellm_exp.core.losses import Targets, head_marginals
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.data.features import FeatureStore, TargetStore
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


def _targets_of(hidden: torch.Tensor, top_k: int, tail_samples: int, exact_rest: bool = False) -> Targets:
    """Targets of a 3-symbol, k=2 alphabet over a 5-token vocabulary, with the hidden rows as teacher logits
    (exact_rest: tokens 1 and 3 are a shortlist's rest)."""
    table = torch.tensor([[1, 2], [2, PAD], [1, PAD], [2, 1], [0, 0]])
    spellable = torch.tensor([True, True, True, True, False])
    rest = torch.tensor([False, True, False, True, False]) if exact_rest else None
    return head_marginals(hidden, table, spellable, 3, top_k=top_k, tail_samples=tail_samples, rest_tokens=rest)


@pytest.mark.parametrize("top_k, tail_samples, exact_rest", [(0, 0, False), (2, 0, False), (2, 3, False),
                                                             (1, 2, True)])
def test_target_store_gives_back_exactly_what_it_computed_once_per_block(tmp_path, top_k, tail_samples, exact_rest):
    torch.manual_seed(0)
    hidden, calls = torch.randn(4, 3, 5), []  # 4 blocks of 3 positions; "hidden" = the teacher's logits here

    def compute(rows):
        calls.append(rows.shape[0])
        return _targets_of(rows, top_k, tail_samples, exact_rest)

    store = TargetStore(tmp_path, 4, 3, k=2, n_symbols=3, top_k=top_k, tail_samples=tail_samples, key={"a": 1},
                        exact_rest=exact_rest)
    first = store.get(torch.tensor([3, 1]), hidden[[3, 1]], compute)
    again = store.get(torch.tensor([1, 3, 0]), hidden[[1, 3, 0]], compute)
    assert calls == [6, 3]  # blocks 3 and 1, then only block 0
    expected = _targets_of(hidden[[1, 3]].flatten(0, 1), top_k, tail_samples, exact_rest)
    reordered = [3, 4, 5, 0, 1, 2]  # `first` holds blocks 3, 1
    for name in Targets.FIELDS:
        want, got = getattr(expected, name), getattr(again.rows(slice(0, 6)), name)
        assert (want is None) == (got is None), name
        if want is None:
            continue
        assert got.dtype == want.dtype, name
        assert torch.equal(got, getattr(first, name)[reordered]), name  # what was stored, bit for bit
        if name != "tail_ids":  # (random draws)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    reopened = TargetStore(tmp_path, 4, 3, k=2, n_symbols=3, top_k=top_k, tail_samples=tail_samples, key={"a": 1},
                           exact_rest=exact_rest)
    assert reopened.n_filled == 3
    changed = TargetStore(tmp_path, 4, 3, k=2, n_symbols=3, top_k=top_k, tail_samples=tail_samples, key={"a": 2})
    assert changed.n_filled == 0


def test_cached_targets_train_as_computed_ones_and_skip_the_teacher_head(cache_dir, tmp_path, monkeypatch):
    cached = ("train.cache_features=true", "train.cache_targets=true")
    plain = distil(_cfg(cache_dir, tmp_path / "features"), tmp_path / "plain")
    first = distil(_cfg(cache_dir, tmp_path / "features", *cached, "trainer.max_steps=8"), tmp_path / "first")

    import spellm_exp.training.module as module

    computed = []
    original = module.chunked_head_marginals
    monkeypatch.setattr(module, "chunked_head_marginals", lambda *a, **kw: computed.append(1) or original(*a, **kw))
    second = distil(_cfg(cache_dir, tmp_path / "features", *cached), tmp_path / "second")
    assert computed == [] and second["steps"] == 4  # the first run filled every block the second visits

    assert second["val"]["val/kl"] == pytest.approx(plain["val"]["val/kl"], abs=1e-6)
    heads = {name: SpeLLM.load(tmp_path / name / "spellm", cache_dir=cache_dir).heads for name in ("plain", "second")}
    torch.testing.assert_close(heads["second"].weight, heads["plain"].weight, rtol=0, atol=1e-6)
    assert first["steps"] == 8


def test_target_cache_needs_the_feature_cache(cache_dir, tmp_path):
    with pytest.raises(ConfigError, match="add train.cache_features=true"):
        distil(_cfg(cache_dir, tmp_path, "train.cache_targets=true"), tmp_path)


@pytest.mark.parametrize("heads, field", [(("heads=mixture", "heads.components=2"), "top_ids"),
                                          (("heads=shortlist", "heads.shortlist=64", "loss.exact_rest=true"),
                                           "rest_marginals")])
def test_a_token_objective_reads_its_top_tokens_tail_draws_and_rest_from_the_target_cache(cache_dir, tmp_path,
                                                                                          monkeypatch, heads, field):
    cached = ("train.cache_features=true", "train.cache_targets=true", *heads)
    first = distil(_cfg(cache_dir, tmp_path / "features", *cached), tmp_path / "first")
    import spellm_exp.training.module as module

    monkeypatch.setattr(module, "chunked_head_marginals", lambda *a, **kw: pytest.fail("targets recomputed"))
    second = distil(_cfg(cache_dir, tmp_path / "features", *cached), tmp_path / "second")
    # the same draws and top tokens: the second run is the first one again
    assert second["val"]["val/token_kl"] == pytest.approx(first["val"]["val/token_kl"], rel=1e-5)
    stores = list((tmp_path / "features").glob("*/targets/*/meta.json"))
    assert len(stores) == 1 and field in stores[0].read_text()
