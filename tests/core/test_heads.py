"""Head types: the k linear heads are k distinct parameter sets (the fused matmul equals k separate ones), and
every type is a normalised distribution over Sigma^k whose scores, greedy string and marginals are exact."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from spellm_exp.config import HeadKind, HeadsConfig
from spellm_exp.core.charset import (
    EOS,
    PAD,
    Alphabet,
    CharsetKind,
    SpellingTable,
    TokenSpellings,
)
from spellm_exp.core.context import TokenContext
from spellm_exp.core.heads import Autoregressive, LinearHeads, build_heads, heads_label, settings_dict
from spellm_exp.core.losses import head_marginals, token_kl

K, SYMBOLS, D = 4, 7, 16


def _heads(seed=0):
    torch.manual_seed(seed)
    heads = LinearHeads(K, SYMBOLS, D)
    torch.nn.init.normal_(heads.bias)
    return heads


def test_fused_equals_k_separate_linear_maps():
    heads, hidden = _heads(), torch.randn(3, 5, D)
    separate = torch.stack([F.linear(hidden, heads.weight[i], heads.bias[i]) for i in range(K)], dim=-2)
    torch.testing.assert_close(heads.logits(hidden), separate)


def test_changing_one_head_leaves_the_others_unchanged():
    heads, hidden = _heads(), torch.randn(2, D)
    before = heads.logits(hidden).detach()
    with torch.no_grad():
        heads.weight[2] += 1.0
    after = heads.logits(hidden).detach()
    for i in range(K):
        assert torch.equal(before[:, i], after[:, i]) == (i != 2)


def test_a_loss_on_one_head_only_moves_that_head():
    heads = _heads()
    heads.logits(torch.randn(2, D))[:, 1].logsumexp(-1).sum().backward()
    grads = heads.weight.grad.abs().sum(dim=(1, 2))
    assert grads[1] > 0 and (grads[[0, 2, 3]] == 0).all()


def test_unembedding_mean_init_by_hand():
    # tokens: 0 = EOS, 1 = "a", 2 = "ab", 3 = "b"; alphabet PAD, EOS, a, b
    spelled = TokenSpellings(pieces=(None, b"a", b"ab", b"b"), end_ids=frozenset({0}), eos_id=0)
    table = SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b")), k=2)
    unembedding = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [2.0, 6.0]])
    heads = LinearHeads(2, 4, 2)
    heads.init_from_unembedding(unembedding, table)
    a, b = 2, 3
    mean_all = unembedding.mean(0)
    # head 0: EOS <- token 0; a <- tokens 1, 2; b <- token 3; PAD <- nobody (mean of all)
    expected0 = {PAD: mean_all, EOS: unembedding[0], a: (unembedding[1] + unembedding[2]) / 2, b: unembedding[3]}
    # head 1: PAD <- tokens 0, 1, 3; b <- token 2; EOS and a <- nobody
    expected1 = {PAD: (unembedding[0] + unembedding[1] + unembedding[3]) / 3, EOS: mean_all, a: mean_all,
                 b: unembedding[2]}
    for symbol in range(4):
        torch.testing.assert_close(heads.weight[0, symbol], expected0[symbol])
        torch.testing.assert_close(heads.weight[1, symbol], expected1[symbol])
    assert (heads.bias == 0).all()


# --- every head type ------------------------------------------------------------------------------
TINY_K, TINY_SIGMA, TINY_D = 3, 4, 6
ALL_STRINGS = torch.tensor(list(itertools.product(range(TINY_SIGMA), repeat=TINY_K)))  # [|Sigma|^k, k]
SETTINGS = {kind.value: HeadsConfig(kind=kind, trunk_multiple=2, components=3, decoder_size=8, shortlist=5)
            for kind in HeadKind}
# the shortlist with the autoregressive type's character decoder spelling its rest
SETTINGS["shortlist+autoregressive"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5,
                                                   rest=HeadKind.autoregressive, decoder_size=8)
SETTINGS["shortlist+mlp"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5, rest=HeadKind.mlp, trunk_multiple=2)
# the rest renormalised over its vocabulary strings, 10% left to the other strings
SETTINGS["shortlist,rest_outside"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5, rest_outside=0.1)
SETTINGS["shortlist+mlp,rest_outside"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5, rest=HeadKind.mlp,
                                                     trunk_multiple=2, rest_outside=0.1)
# the tokens each position has seen scored exactly too (core.context)
SETTINGS["shortlist+context"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5, context_tokens=True)
SETTINGS["shortlist+context,rest_outside"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5, context_tokens=True,
                                                         rest_outside=0.1)
# the list's last 3 rows one rank-2 product (heads.tail_rank, heads.exact_rows)
SETTINGS["shortlist,tail"] = HeadsConfig(kind=HeadKind.shortlist, shortlist=5, tail_rank=2, exact_rows=2)
TINY_VOCABULARY = ALL_STRINGS[::5]  # 13 "vocabulary" strings, one of them a shortlist placeholder


def _seen_tokens(n: int, seed: int = 0) -> TokenContext:
    """One group of n positions that have seen some of 4 tokens: two of them spell the same string, the first
    position has seen none."""
    generator = torch.Generator().manual_seed(seed)
    strings = TINY_VOCABULARY[[3, 7, 7, 11]].unsqueeze(0)  # [1, 4, k]
    visible = torch.rand(1, n, 4, generator=generator) < 0.6
    visible[:, 0] = False
    return TokenContext(torch.tensor([[30, 31, 32, 33]]), strings, torch.randn(1, 4, TINY_D, generator=generator),
                        visible)


def _random_heads(kind: HeadKind, seed: int):
    torch.manual_seed(seed)
    heads = build_heads(SETTINGS[kind], TINY_K, TINY_SIGMA, TINY_D)
    with torch.no_grad():  # the zero-initialised parts too, so every part of the type is exercised
        for parameter in heads.parameters():
            parameter.normal_(std=0.7)
    if heads.kind is HeadKind.shortlist:
        heads.vocab_strings = TINY_VOCABULARY  # what attach_spelling keeps of a spelling table
    return heads


def _distribution(heads, hidden):
    return heads(hidden, _seen_tokens(hidden.shape[0])) if getattr(heads, "context_tokens", False) else heads(hidden)


def _all_string_log_probs(heads, hidden):
    return _distribution(heads, hidden).log_prob(ALL_STRINGS.expand(hidden.shape[0], -1, -1))  # [n, |Sigma|^k]


@pytest.mark.parametrize("kind", list(SETTINGS))
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_probabilities_over_all_strings_sum_to_one(kind, seed):
    heads = _random_heads(kind, seed)
    with torch.no_grad():
        log_probs = _all_string_log_probs(heads, torch.randn(4, TINY_D))
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_log_prob_of_given_strings_equals_the_enumeration(kind):
    heads, hidden = _random_heads(kind, 1), torch.randn(3, TINY_D)
    picks = torch.tensor([[5, 17, 40], [0, 63, 2], [9, 9, 33]])  # rows of ALL_STRINGS per position
    with torch.no_grad():
        every = _all_string_log_probs(heads, hidden)
        scored = _distribution(heads, hidden).log_prob(ALL_STRINGS[picks])
    torch.testing.assert_close(scored, every.gather(1, picks))


@pytest.mark.parametrize("kind", [HeadKind.linear, HeadKind.mlp, HeadKind.mixture, HeadKind.shortlist, "shortlist+mlp",
                                  "shortlist,rest_outside", "shortlist+mlp,rest_outside", "shortlist+context",
                                  "shortlist+context,rest_outside"])
def test_marginals_are_exact(kind):
    heads, hidden = _random_heads(kind, 2), torch.randn(2, TINY_D)
    with torch.no_grad():
        probs = _all_string_log_probs(heads, hidden).exp()
        marginals = _distribution(heads, hidden).marginal_log_probs().exp()
    for i in range(TINY_K):
        expected = torch.zeros(2, TINY_SIGMA).index_add_(1, ALL_STRINGS[:, i], probs)
        torch.testing.assert_close(marginals[:, i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", [HeadKind.linear, HeadKind.mlp])
def test_greedy_of_factorised_heads_is_the_most_likely_string(kind):
    heads, hidden = _random_heads(kind, 3), torch.randn(5, TINY_D)
    with torch.no_grad():
        best = ALL_STRINGS[_all_string_log_probs(heads, hidden).argmax(-1)]
        assert torch.equal(heads(hidden).greedy(forbid_pad_first=False), best)
        assert (heads(hidden).greedy(forbid_pad_first=True)[:, 0] != PAD).all()


def test_mixture_greedy_is_the_best_component_argmax_by_the_whole_mixture():
    heads, hidden = _random_heads(HeadKind.mixture, 4), torch.randn(5, TINY_D)
    with torch.no_grad():
        strings = heads(hidden)
        candidates = strings.log_probs.argmax(-1)  # [n, M, k]
        scores = strings.log_prob(candidates)
        expected = candidates[torch.arange(5), scores.argmax(-1)]
        assert torch.equal(strings.greedy(forbid_pad_first=False), expected)


def test_a_shortlist_with_an_autoregressive_rest_greedily_picks_the_better_of_its_two_candidates():
    heads, hidden = _random_heads("shortlist+autoregressive", 7), torch.randn(6, TINY_D)
    with torch.no_grad():
        strings = heads(hidden)
        assert isinstance(strings.rest, Autoregressive)
        candidates = torch.stack([heads.strings[strings.log_weights[:, :-1].argmax(-1)],
                                  strings.rest.greedy(forbid_pad_first=False)], dim=1)
        scores = strings.log_prob(candidates)
        expected = candidates[torch.arange(6), scores.argmax(-1)]
        assert torch.equal(strings.greedy(forbid_pad_first=False), expected)
    assert heads_label(heads.settings()) == "shortlist-5+autoregressive-8"
    assert heads_label(SETTINGS["shortlist+mlp"]) == "shortlist-5+mlp-2"
    with_trunk = build_heads(SETTINGS["shortlist+mlp"], TINY_K, TINY_SIGMA, TINY_D)
    assert with_trunk.settings() == SETTINGS["shortlist+mlp"]
    assert with_trunk.decode_flops() - build_heads(SETTINGS["shortlist"], TINY_K, TINY_SIGMA, TINY_D).decode_flops() \
        == 4 * TINY_D * 2 * TINY_D
    # the decoder's parameters and FLOPs come on top of the shortlist with linear rest heads
    plain = build_heads(SETTINGS["shortlist"], TINY_K, TINY_SIGMA, TINY_D)
    r = 8
    assert heads.num_parameters() - plain.num_parameters() == (TINY_D * r + r) + TINY_K * r + 2 * TINY_K * TINY_SIGMA * r \
        + TINY_K * TINY_SIGMA
    assert heads.decode_flops() - plain.decode_flops() == 2 * TINY_D * r + TINY_K * (2 * TINY_SIGMA * r + 2 * r)


def test_autoregressive_greedy_takes_each_conditional_argmax_and_ends_with_pad():
    heads, hidden = _random_heads(HeadKind.autoregressive, 5), torch.randn(6, TINY_D)
    with torch.no_grad():
        strings = heads(hidden)
        greedy = strings.greedy(forbid_pad_first=False)
        every = _all_string_log_probs(heads, hidden)
        for row in range(6):  # the argmax of p(s_i | s_<i) over strings that share the greedy prefix
            for i in range(TINY_K):
                same_prefix = (ALL_STRINGS[:, :i] == greedy[row, :i]).all(-1)
                mass = torch.zeros(TINY_SIGMA).index_add_(0, ALL_STRINGS[same_prefix, i], every[row, same_prefix].exp())
                assert mass.argmax().item() == greedy[row, i].item()
    # after PAD or EOS every later symbol is PAD: strings like "a PAD b" have probability 0
    assert every[:, (ALL_STRINGS[:, 0] == PAD) & (ALL_STRINGS[:, 1] != PAD)].exp().max() == 0


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_vocab_log_probs_are_the_spellings_scores(kind):
    heads, hidden = _random_heads(kind, 6), torch.randn(2, TINY_D)
    table = ALL_STRINGS[[3, 10, 25, 40, 63]]
    spellable = torch.tensor([True, True, False, True, True])
    with torch.no_grad():
        scores = _distribution(heads, hidden).vocab_log_probs(table, spellable)
        expected = _distribution(heads, hidden).log_prob(table.expand(2, -1, -1))
    torch.testing.assert_close(scores[:, spellable], expected[:, spellable])
    assert torch.isinf(scores[:, 2]).all()


@pytest.mark.parametrize("kind,rest", [(kind, HeadKind.linear) for kind in HeadKind]
                         + [(HeadKind.shortlist, HeadKind.autoregressive), (HeadKind.shortlist, HeadKind.mlp)])
def test_every_type_starts_as_the_linear_heads_product_or_a_noisy_copy(kind, rest):
    spelled = TokenSpellings(pieces=(None, b"a", b"ab", b"b"), end_ids=frozenset({0}), eos_id=0)
    table = SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b")), k=2)
    torch.manual_seed(0)
    unembedding = torch.randn(4, 5)
    linear = LinearHeads(2, 4, 5)
    linear.init_from_unembedding(unembedding, table)
    heads = build_heads(HeadsConfig(kind=kind, components=2, shortlist=2, rest=rest), 2, 4, 5)
    heads.fit_vocabulary(table)
    heads.init_from_unembedding(unembedding, table)
    hidden = torch.randn(3, 5)
    # strings that have not ended before their last symbol (after an end the autoregressive type puts all
    # the mass on PAD, where the product spreads it)
    strings = torch.tensor(list(itertools.product([2, 3], range(4)))).expand(3, -1, -1)
    with torch.no_grad():
        expected, got = linear(hidden).log_prob(strings), heads(hidden).log_prob(strings)
    if kind is HeadKind.mixture:  # components are the linear init plus 10% noise
        assert (got - expected).abs().max() < 0.5 and not torch.equal(got, expected)
    elif kind is HeadKind.shortlist:  # its rest is the linear heads; its tokens score with the teacher's own rows
        torch.testing.assert_close(heads(hidden).rest.log_prob(strings), linear(hidden).log_prob(strings))
        torch.testing.assert_close(heads.weight, unembedding[heads.token_ids])
    else:
        torch.testing.assert_close(got, expected)


def test_parameter_counts_and_flops_by_hand():
    k, sigma, d = 4, 10, 8
    counts = {kind: build_heads(HeadsConfig(kind=kind, trunk_multiple=2, components=3, decoder_size=6, shortlist=7),
                                k, sigma, d) for kind in HeadKind}
    linear = k * sigma * d + k * sigma
    assert counts[HeadKind.linear].num_parameters() == linear
    assert counts[HeadKind.mlp].num_parameters() == linear + (d * 16 + 16) + (16 * d + d)
    assert counts[HeadKind.mixture].num_parameters() == 3 * linear + (d * 3 + 3)
    assert counts[HeadKind.autoregressive].num_parameters() == linear + (d * 6 + 6) + k * 6 + 2 * k * sigma * 6 + k * sigma
    assert counts[HeadKind.shortlist].num_parameters() == linear + 7 * d + 7 + (d + 1)  # rows, biases, gate
    assert counts[HeadKind.linear].decode_flops() == 2 * k * sigma * d
    assert counts[HeadKind.shortlist].decode_flops() == 2 * 8 * d + 2 * k * sigma * d
    assert counts[HeadKind.mixture].decode_flops() == 2 * 3 * (k * sigma + 1) * d
    assert settings_dict(counts[HeadKind.mixture].settings()) == {"kind": "mixture", "components": 3}
    tail = build_heads(HeadsConfig(kind=HeadKind.shortlist, shortlist=7, tail_rank=3, exact_rows=2), k, sigma, d)
    assert tail.num_parameters() == linear + 2 * d + (3 * d + 5 * 3) + 7 + (d + 1)  # exact rows, factors, biases, gate
    assert tail.decode_flops() == 2 * (3 * d + 3 * (d + 5)) + 2 * k * sigma * d
    assert settings_dict(tail.settings()) == {"kind": "shortlist", "shortlist": 7, "tail_rank": 3, "exact_rows": 2}
    assert heads_label(tail.settings()) == "shortlist-7,tail 2+rank-3"


def test_a_factored_tail_keeps_the_first_rows_exact_and_fits_the_rest_for_the_hidden_states():
    torch.manual_seed(0)
    unembedding, hidden = torch.randn(20, 6), torch.randn(200, 6) * torch.tensor([5.0, 3, 1, 0.3, 0.1, 0.05])
    heads = build_heads(HeadsConfig(kind=HeadKind.shortlist, shortlist=8, tail_rank=2, exact_rows=3), 2, 4, 6)
    heads.token_ids.copy_(torch.tensor([4, 0, 9, 1, 2, 3, 5, 6]))
    heads.fit_rows(unembedding)  # no hidden states: the best rank-2 tail in Frobenius norm
    rows = heads.list_rows()
    assert torch.equal(rows[:3], unembedding[[4, 0, 9]])
    assert torch.linalg.matrix_rank(rows[3:]) == 2
    plain_error = ((hidden @ (rows - unembedding[heads.token_ids]).T) ** 2).mean()
    heads.fit_rows(unembedding, hidden.T @ hidden / len(hidden))  # the best rank-2 tail for these hidden states' logits
    data_error = ((hidden @ (heads.list_rows() - unembedding[heads.token_ids]).T) ** 2).mean()
    assert torch.equal(heads.list_rows()[:3], unembedding[[4, 0, 9]]) and data_error < plain_error
    logits = heads.list_logits(hidden[:5])
    torch.testing.assert_close(logits, hidden[:5] @ heads.list_rows().T + heads.bias)
    with pytest.raises(ValueError, match=r"heads.tail_rank=6: use a rank below the model's width d=6"):
        build_heads(HeadsConfig(kind=HeadKind.shortlist, shortlist=8, tail_rank=6, exact_rows=3), 2, 4, 6)


def _shortlist_table():
    spelled = TokenSpellings(pieces=(None, b"a", b"ab", b"b", b"ba", b"a"), end_ids=frozenset({0}), eos_id=0)
    return SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b")), k=2)


def test_the_shortlist_keeps_the_most_frequent_tokens_one_per_string():
    table = _shortlist_table()  # token 5 spells as token 1 ("a")
    heads = build_heads(HeadsConfig(kind=HeadKind.shortlist, shortlist=3), 2, 4, 5)
    heads.fit_vocabulary(table, torch.tensor([100, 5, 1, 9, 0, 7]))
    # by count: 0 (an end token, its own string), 3 ("b"), 5 ("a"); 1 ("a" again) is left out
    assert heads.token_ids.tolist() == [0, 3, 5]
    assert torch.equal(heads.strings, table.table[[0, 3, 5]])
    assert heads.slot_of(table.table).tolist() == [0, 2, -1, 1, -1, 2]
    with pytest.raises(ValueError, match="spells only 5 distinct strings"):
        build_heads(HeadsConfig(kind=HeadKind.shortlist, shortlist=6), 2, 4, 5).fit_vocabulary(table)


def test_a_shortlist_token_scores_its_own_weight_plus_what_the_rest_gives_its_string():
    heads = _random_heads(HeadKind.shortlist, 3)
    hidden = torch.randn(2, TINY_D)
    with torch.no_grad():
        dist = heads(hidden)
        strings = heads.strings[[1, 4]].unsqueeze(0).expand(2, -1, -1)
        rest = dist.log_weights[:, -1:] + dist.rest.log_prob(strings)
        expected = torch.logaddexp(dist.log_weights[:, [1, 4]], rest)
        torch.testing.assert_close(dist.log_prob(strings), expected)
        # greedy: the better of the top shortlist string and the rest's argmax, by the whole distribution
        greedy = dist.greedy(forbid_pad_first=False)
        every = _all_string_log_probs(heads, hidden)
        assert (dist.log_prob(greedy.unsqueeze(1)).squeeze(1) <= every.max(-1).values + 1e-6).all()


def test_a_rest_over_its_vocabulary_rescales_the_rest_inside_and_outside_and_is_the_plain_rest_at_one():
    """p'(s) = p(s) (1 - eps (1 - Z)) / Z on the rest's vocabulary strings, eps p(s) on the others."""
    torch.manual_seed(4)
    hidden = torch.randn(3, TINY_D)
    renormalised = _random_heads("shortlist,rest_outside", 5)
    plain = build_heads(HeadsConfig(kind=HeadKind.shortlist, shortlist=5), TINY_K, TINY_SIGMA, TINY_D)
    plain.load_state_dict(renormalised.state_dict())
    with torch.no_grad():
        p, q = plain(hidden), renormalised(hidden)
        rest = p.rest.log_prob(ALL_STRINGS.expand(3, -1, -1)).exp()  # [3, 64]
        in_shortlist = (plain.slot_of(ALL_STRINGS) >= 0)
        in_vocabulary = (ALL_STRINGS.unsqueeze(1) == TINY_VOCABULARY).all(-1).any(-1)
        inside = in_vocabulary & ~in_shortlist
        z = rest[:, inside].sum(-1, keepdim=True)
        expected = torch.where(inside, rest * (1 - 0.1 * (1 - z)) / z, 0.1 * rest)
        weights = q.log_weights.exp()
        exact = torch.zeros(3, len(ALL_STRINGS))
        exact[:, in_shortlist] = weights[:, plain.slot_of(ALL_STRINGS[in_shortlist])]
        torch.testing.assert_close(_all_string_log_probs(renormalised, hidden).exp(),
                                   exact + weights[:, -1:] * expected, atol=1e-6, rtol=1e-5)
        assert renormalised.rest_strings().shape[0] == int(inside.sum()) == 12
        # greedy: the most likely of the three candidates, so never below the rest's best vocabulary string
        greedy = q.log_prob(q.greedy(forbid_pad_first=False).unsqueeze(1)).squeeze(1)
        assert (greedy >= q.log_prob(q.over_vocabulary.best.unsqueeze(1)).squeeze(1) - 1e-6).all()
        renormalised.rest_outside = 1.0
        torch.testing.assert_close(renormalised(hidden).log_prob(ALL_STRINGS.expand(3, -1, -1)),
                                   p.log_prob(ALL_STRINGS.expand(3, -1, -1)))
    assert heads_label(SETTINGS["shortlist,rest_outside"]) == "shortlist-5,rest_outside=0.1"
    assert settings_dict(SETTINGS["shortlist,rest_outside"]) == {"kind": "shortlist", "shortlist": 5,
                                                                 "rest_outside": 0.1}
    assert "rest_outside" not in settings_dict(SETTINGS["shortlist"])  # older checkpoints read the same


@pytest.mark.parametrize("settings_, message", [
    (HeadsConfig(kind=HeadKind.shortlist, rest_outside=0.0), r"heads.rest_outside=0.0: use a share in \(0, 1\]"),
    (HeadsConfig(kind=HeadKind.shortlist, rest_outside=0.1, rest=HeadKind.autoregressive),
     "needs a rest that is a product"),
])
def test_a_bad_rest_outside_fails_with_the_fix(settings_, message):
    with pytest.raises(ValueError, match=message):
        build_heads(settings_, TINY_K, TINY_SIGMA, TINY_D)


# --- the exact rest loss (loss.exact_rest) -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["shortlist", "shortlist+mlp", "shortlist,rest_outside"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_exact_rest_loss_equals_the_token_kl_over_every_token(kind, seed):
    """Targets that take the rest's tokens out of the top/tail estimate and score them by their marginals give the
    same token KL as scoring every vocabulary token exactly (top_k = |V|, no tail)."""
    heads = _random_heads(kind, seed)
    # the vocabulary's rest strings, the shortlist's own strings, and duplicates of both
    table = torch.cat([TINY_VOCABULARY, heads.strings, TINY_VOCABULARY[:3], heads.strings[:2]])
    spellable = torch.ones(table.shape[0], dtype=torch.bool)
    rest = heads.rest_tokens(table, spellable)
    in_vocabulary = (table.unsqueeze(1) == TINY_VOCABULARY).all(-1).any(-1)
    assert torch.equal(rest, in_vocabulary & (heads.slot_of(table) < 0))  # the vocabulary's, less the shortlist's
    assert 0 < rest.sum() < table.shape[0]
    torch.manual_seed(seed)
    logits, hidden = torch.randn(4, table.shape[0]) * 2, torch.randn(4, TINY_D)
    every = head_marginals(logits, table, spellable, TINY_SIGMA, top_k=table.shape[0])
    split = head_marginals(logits, table, spellable, TINY_SIGMA, top_k=table.shape[0], rest_tokens=rest)
    q = torch.softmax(logits, -1)
    torch.testing.assert_close(split.rest_mass, q[:, rest].sum(-1))
    torch.testing.assert_close(split.rest_marginals.sum(-1), split.rest_mass.unsqueeze(-1).expand(-1, TINY_K))
    assert (split.top_probs[rest[split.top_ids]] == 0).all()  # the rest's tokens carry no top weight
    with torch.no_grad():
        student = heads(hidden)
        torch.testing.assert_close(token_kl(student, split, table), token_kl(student, every, table))


def test_the_exact_rest_loss_needs_a_product_rest():
    heads = _random_heads("shortlist+autoregressive", 0)
    table = torch.cat([TINY_VOCABULARY, heads.strings])
    spellable = torch.ones(table.shape[0], dtype=torch.bool)
    targets = head_marginals(torch.randn(2, table.shape[0]), table, spellable, TINY_SIGMA, top_k=4,
                             rest_tokens=heads.rest_tokens(table, spellable))
    with pytest.raises(ValueError, match="heads.rest=linear or mlp"):
        token_kl(heads(torch.randn(2, TINY_D)), targets, table)


# --- seen tokens (heads.context_tokens) ------------------------------------------------------------------------
def test_seen_tokens_join_the_softmax_with_their_exact_logits_and_sum_per_string():
    """p(s) = sum over seen tokens t with S[t] = s of exp(u_t h) / Z, next to the shortlist's and the rest's terms,
    Z over the shortlist's logits, the seen tokens' and the gate."""
    heads, hidden = _random_heads("shortlist+context", 3), torch.randn(5, TINY_D)
    context = _seen_tokens(5)
    with torch.no_grad():
        dist = heads(hidden, context)
        seen = hidden @ context.rows[0].T  # [5, 4]
        scores = torch.cat([hidden @ heads.weight.T + heads.bias, seen.masked_fill(~context.visible[0], -torch.inf),
                            hidden @ heads.gate.weight.T + heads.gate.bias], dim=-1)
        log_z = torch.logsumexp(scores, dim=-1, keepdim=True)
        torch.testing.assert_close(dist.log_weights, torch.cat([scores[:, :5], scores[:, -1:]], -1) - log_z)
        target = TINY_VOCABULARY[7]  # tokens 31 and 32 both spell it
        both = torch.logsumexp(seen[:, 1:3].masked_fill(~context.visible[0, :, 1:3], -torch.inf), -1) - log_z[:, 0]
        plain_rest = dist.log_weights[:, -1] + dist.rest.log_prob(target.expand(5, 1, -1)).squeeze(1)
        got = dist.log_prob(target.expand(5, 1, -1)).squeeze(1)
        torch.testing.assert_close(got, torch.logaddexp(both, plain_rest))
        assert torch.equal(got[0], plain_rest[0])  # the first position has seen nothing
        # greedy considers the most likely seen token: never below its probability
        greedy = dist.log_prob(dist.greedy(forbid_pad_first=False).unsqueeze(1)).squeeze(1)
        assert (greedy >= dist.log_prob(dist.context.best().unsqueeze(1)).squeeze(1) - 1e-6).all()
    assert heads_label(SETTINGS["shortlist+context"]) == "shortlist-5+context"
    assert settings_dict(SETTINGS["shortlist+context"])["context_tokens"] is True
    assert "context_tokens" not in settings_dict(SETTINGS["shortlist"])  # older checkpoints read the same
    with pytest.raises(ValueError, match="call the heads with their TokenContext"):
        heads(hidden)


SHORTLISTS = [name for name, config in SETTINGS.items() if config.kind is HeadKind.shortlist]


@pytest.mark.parametrize("kind", SHORTLISTS)
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_greedy_scores_its_candidates_as_log_prob_does(kind, seed):
    """The decode step's shorter scoring of a few candidates (seen tokens compared string by string) is log_prob's,
    and greedy picks the best of its candidates by log_prob."""
    heads, hidden = _random_heads(kind, seed), torch.randn(5, TINY_D)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dist = _distribution(heads, hidden)
        # shortlist strings, seen tokens' strings, the rest's argmax and random strings, a string twice
        candidates = torch.cat([heads.strings[:2].expand(5, -1, -1), TINY_VOCABULARY[[7, 11]].expand(5, -1, -1),
                                dist.rest.greedy(False).unsqueeze(1),
                                ALL_STRINGS[torch.randint(0, len(ALL_STRINGS), (5, 3), generator=generator)]], 1)
        candidates[:, -1] = candidates[:, 0]
        if dist.over_vocabulary is None:
            torch.testing.assert_close(dist._candidate_scores(candidates), dist.log_prob(candidates))
        expected = [heads.strings[dist.log_weights[:, :-1].argmax(-1)], dist.rest.greedy(False)]
        expected += [] if dist.over_vocabulary is None else [dist.over_vocabulary.best]
        expected += [] if dist.context is None else [dist.context.best()]
        expected = torch.stack(expected, 1)
        expected = expected[torch.arange(5), dist.log_prob(expected).argmax(-1)]
        assert torch.equal(dist.greedy(forbid_pad_first=False), expected)


@pytest.mark.parametrize("kind", ["shortlist", "shortlist+context"])
def test_packed_rows_give_the_same_distribution_and_stay_the_parameters(kind, tmp_path):
    """pack_rows lays the list, gate and rest heads out as one matrix that the parameters are views of: the same
    distribution from one matmul, loads and in-place updates reach it, moving the heads unpacks them."""
    heads, hidden = _random_heads(kind, 5), torch.randn(4, TINY_D)
    with torch.no_grad():
        before = _distribution(heads, hidden)
        assert heads.pack_rows() and heads._packed is not None
        packed_matrix = heads._packed[0]
        assert heads.weight.data_ptr() == packed_matrix.data_ptr()
        assert heads.linear.weight.data_ptr() == packed_matrix[5 + 1].data_ptr()  # after the 5 list rows and the gate
        after = _distribution(heads, hidden)
        torch.testing.assert_close(after.log_weights, before.log_weights)
        torch.testing.assert_close(after.rest.logits, before.rest.logits)
        assert torch.equal(after.greedy(False), before.greedy(False))
        heads.linear.bias.add_(1.0)  # an in-place change reaches the packed matrix
        moved = _distribution(heads, hidden)
        torch.testing.assert_close(moved.rest.logits, before.rest.logits + 1.0)
    with torch.enable_grad():  # training reads the parameters themselves: gradients reach them
        _distribution(heads, hidden).log_weights.sum().backward()
    assert heads.weight.grad is not None and heads.gate.weight.grad is not None
    heads.to(torch.float64)
    assert heads._packed is None and heads.weight.dtype == torch.float64
    assert build_heads(SETTINGS["shortlist,tail"], TINY_K, TINY_SIGMA, TINY_D).pack_rows() is False
    assert LinearHeads(K, SYMBOLS, D).pack_rows() is False
