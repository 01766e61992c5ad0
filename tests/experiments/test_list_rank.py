"""The factored-list ceiling (experiments/list_rank.py): exact at full rank, each fit optimal for what it optimises,
and the command's table on a tiny shortlist SpeLLM."""

import pandas as pd
import pytest
import torch

from spellm_exp.config import HeadsConfig, HeadKind, compose_config
from spellm_exp.core.charset import Alphabet
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.core.low_rank import data_aware, truncated
from spellm_exp.experiments.list_rank import ListScores, divergence, kl_refined, rank_rows, with_tail
from spellm_exp.reporting.list_rank import write_list_rank_table


def _anisotropic_hidden(n: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -1, d)  # a few directions carry most of the variance, as in an LLM's hidden states
    return torch.randn(n, d, generator=generator) * scales


def _scores(length: int = 40, d: int = 12, seed: int = 1) -> ListScores:
    generator = torch.Generator().manual_seed(seed)
    return ListScores(torch.randn(length, d, generator=generator) * 0.3, torch.randn(length, generator=generator),
                      torch.randn(1, d, generator=generator) * 0.3, torch.zeros(1))


def test_both_factorisations_are_exact_at_full_rank():
    scores, hidden = _scores(), _anisotropic_hidden(200, 12)
    second_moment = hidden.T @ hidden / hidden.shape[0]
    for a, b in (truncated(scores.weight, 12), data_aware(scores.weight, second_moment, 12)):
        assert a.shape == (40, 12) and b.shape == (12, 12)
        torch.testing.assert_close(a @ b, scores.weight, atol=1e-4, rtol=1e-4)
    result = divergence(scores, scores.weight, hidden, scores.log_weights(hidden))
    assert result["kl_mean"] == pytest.approx(0.0, abs=1e-6) and result["top1_agreement"] == 1.0


def test_the_data_aware_fit_has_the_least_logit_error_on_the_fit_positions():
    """SVD of W S^(1/2) is the optimum of E||W h - A B h||^2 (Eckart-Young in the S-weighted norm): it beats plain
    truncation, and the error equals the discarded singular values' squares."""
    scores, hidden = _scores(), _anisotropic_hidden(400, 12)
    second_moment = hidden.T @ hidden / hidden.shape[0]

    def logit_error(factors):
        a, b = factors
        return ((hidden @ (scores.weight - a @ b).T) ** 2).sum(-1).mean().item()

    for rank in (2, 4, 8):
        data, plain = logit_error(data_aware(scores.weight, second_moment, rank)), logit_error(truncated(scores.weight, rank))
        assert data < plain
        values, vectors = torch.linalg.eigh(second_moment.double())
        singular = torch.linalg.svdvals(scores.weight.double() @ (vectors * values.sqrt()) @ vectors.T)
        assert data == pytest.approx((singular[rank:] ** 2).sum().item(), rel=1e-3)


def test_refining_on_the_kl_lowers_the_kl_it_is_fitted_on():
    scores, hidden = _scores(), _anisotropic_hidden(300, 12)
    target = scores.log_weights(hidden)
    start = data_aware(scores.weight, hidden.T @ hidden / hidden.shape[0], 3)
    refined = kl_refined(scores, 0, start, hidden, target, steps=60, batch=300, lr=1e-2)
    before = divergence(scores, start[0] @ start[1], hidden, target)["kl_mean"]
    after = divergence(scores, refined[0] @ refined[1], hidden, target)["kl_mean"]
    assert after < before


def test_keeping_the_first_rows_exact_factors_only_the_tail():
    scores, hidden = _scores(), _anisotropic_hidden(300, 12)
    tail = truncated(scores.weight[30:], 2)
    rows = with_tail(scores, 30, tail)
    assert torch.equal(rows[:30], scores.weight[:30]) and torch.allclose(rows[30:], tail[0] @ tail[1])
    # the same rank costs less when it replaces 10 rows instead of 40
    reference = scores.log_weights(hidden)
    whole = divergence(scores, with_tail(scores, 0, truncated(scores.weight, 2)), hidden, reference)["kl_mean"]
    assert divergence(scores, rows, hidden, reference)["kl_mean"] < whole


def test_rank_rows_has_one_row_per_tail_rank_and_fit_and_rejects_bad_sizes():
    scores = _scores()
    rows = rank_rows(scores, _anisotropic_hidden(200, 12), _anisotropic_hidden(100, 12, seed=5), [0, 30], [3, 12],
                     refine_steps=5, refine_batch=50, refine_lr=1e-3)
    assert [(row["exact_rows"], row["rank"], row["fit"]) for row in rows] == [
        (e, r, f) for e in (0, 30) for r in (3, 12) for f in ("svd", "data", "kl")]
    assert rows[5]["list_bytes_ratio"] == pytest.approx((40 * 12 + 12 * 12) / (40 * 12))
    assert rows[6]["list_bytes_ratio"] == pytest.approx((30 * 12 + 10 * 3 + 3 * 12) / (40 * 12))
    assert all(row["kl_mean"] < 1e-5 for row in rows if row["rank"] == 12 and row["fit"] != "kl")
    assert all(row["kl_mean"] > 1e-4 for row in rows if row["rank"] == 3)
    hidden = _anisotropic_hidden(50, 12)
    with pytest.raises(ValueError, match=r"ranks: 13 is not in 1..12"):
        rank_rows(scores, hidden, hidden, [0], [13], 1, 10, 1e-3)
    with pytest.raises(ValueError, match=r"exact_rows: 40 is not in 0..39"):
        rank_rows(scores, hidden, hidden, [40], [2], 1, 10, 1e-3)


def _tiny_spellm(tiny_teacher, kind: HeadKind) -> SpeLLM:
    teacher = tiny_teacher("tiny_llama")
    alphabet = Alphabet.ascii_()
    heads = HeadsConfig(kind=kind, shortlist=64) if kind is HeadKind.shortlist else HeadsConfig(kind=kind)
    return SpeLLM.build(teacher, alphabet, k=4, heads=heads)


def test_the_command_writes_the_table_for_a_shortlist_checkpoint(tiny_teacher, cache_dir, tmp_path):
    _tiny_spellm(tiny_teacher, HeadKind.shortlist).save(tmp_path / "run" / "spellm")
    cfg = compose_config("list_rank", [f"paths.cache_dir={cache_dir}", f"paths.results_dir={tmp_path / 'results'}",
                                       "~models.gemma", f"models.smollm2.checkpoint={tmp_path / 'run'}",
                                       "models.smollm2.data.max_chars_per_source=20000",
                                       "models.smollm2.data.block_size=16", "models.smollm2.data.val_blocks=4",
                                       "fit_blocks=8", "exact_rows=[0,16]", "ranks=[8,64]", "refine_steps=3",
                                       "refine_batch=32"])
    paths = write_list_rank_table(cfg, "python -m spellm_exp.list_rank")
    frame = pd.read_csv(tmp_path / "results" / "list_rank.csv")
    assert [p.name for p in paths] == ["list_rank.csv", "list_rank.md", "list_rank.provenance.json"]
    assert list(frame["exact_rows"]) == [0] * 6 + [16] * 6 and list(frame["rank"]) == ([8] * 3 + [64] * 3) * 2
    assert set(frame["fit_positions"]) == {8 * 16}
    assert set(frame["test_positions"]) == {4 * 16} and set(frame["list"]) == {64} and set(frame["d"]) == {64}
    full = frame[(frame["rank"] == 64) & (frame["fit"] != "kl")]
    assert (full["kl_mean"] < 1e-4).all() and (full["top1_agreement"] == 1.0).all()
    assert "kl_mean (data)" in (tmp_path / "results" / "list_rank.md").read_text()


def test_the_command_fails_before_loading_anything_for_a_linear_or_missing_checkpoint(tiny_teacher, tmp_path):
    _tiny_spellm(tiny_teacher, HeadKind.linear).save(tmp_path / "linear" / "spellm")
    for checkpoint, message in ((tmp_path / "linear", "its heads are 'linear'; a list rank needs heads=shortlist"),
                                (tmp_path / "nowhere", "no SpeLLM checkpoint there")):
        cfg = compose_config("list_rank", ["~models.gemma", f"models.smollm2.checkpoint={checkpoint}",
                                           f"paths.results_dir={tmp_path / 'results'}"])
        with pytest.raises(ValueError, match=message):
            write_list_rank_table(cfg, "python -m spellm_exp.list_rank")
    assert not (tmp_path / "results").exists()
