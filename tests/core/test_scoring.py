"""score(): the output segmentation rule and the k-head log-probability, checked by hand."""

import math

import pytest
import torch

from spellm_exp.core.charset import EOS, PAD, Alphabet, CharsetKind, SegmentationError
from spellm_exp.core.scoring import encode_pair, score_requests, segment
from spellm_exp.core.spellm import SpeLLM

LETTERS = Alphabet(CharsetKind.chars, tuple(" abcdefghijklmnopqrstuvwxyzT."))


@pytest.fixture(scope="module")
def spellm(tiny_teacher):
    model = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=4)
    torch.manual_seed(0)
    with torch.no_grad():  # make the heads sharp and different, so the hand computation is not trivial
        model.heads.weight.normal_(std=0.5)
        model.heads.bias.normal_()
    return model


def _symbols(text: str, k: int) -> list[int]:
    index = {c: i + 2 for i, c in enumerate(LETTERS.units)}
    return [index[c] for c in text] + [PAD] * (k - len(text))


def test_score_equals_a_hand_computation(spellm):
    context, continuation = "The cat", " sat on"
    tokenizer = spellm.tokenizer
    context_ids = tokenizer(context).input_ids
    pieces = [" sat", " on"]
    segment_ids = [tokenizer.convert_tokens_to_ids(tokenizer.tokenize(p)[0]) for p in pieces]
    assert tokenizer(context + continuation).input_ids == context_ids + segment_ids

    with torch.no_grad():
        hidden = spellm.causal_lm.base_model(torch.tensor([context_ids + segment_ids[:1]])).last_hidden_state[0]
    expected = 0.0
    for j, piece in enumerate(pieces):
        h = hidden[len(context_ids) - 1 + j]
        for i, symbol in enumerate(_symbols(piece, 4)):
            logits = spellm.heads.weight[i] @ h + spellm.heads.bias[i]
            expected += torch.log_softmax(logits, -1)[symbol].item()

    result = spellm.score(context, continuation)
    assert result.n_segments == 2 and result.n_resegmented == 0 and result.failure is None
    assert result.logprob == pytest.approx(expected, abs=1e-4)


def test_tokens_longer_than_k_are_covered_by_longest_spellable_prefixes(spellm):
    context_ids, continuation_ids = encode_pair(spellm.tokenizer, "It was", " beautiful")
    assert len(continuation_ids) == 1  # " beautiful" is one token of 10 characters > k = 4
    segments, n_resegmented = segment(spellm.spelling, continuation_ids)
    spelled = [spellm.spelling.spellings.pieces[s].decode() for s in segments]
    assert "".join(spelled) == " beautiful" and n_resegmented == 1
    assert all(len(s) <= 4 for s in spelled)
    # longest prefix first: no two neighbouring segments could have been one spellable segment
    for left, right in zip(spelled, spelled[1:]):
        merged = tuple(left + right[0])
        assert len(merged) > 4 or merged not in spellm.spelling.string_to_id
    result = spellm.score("It was", " beautiful")
    assert result.n_segments == len(segments) and result.n_resegmented == 1


def test_uncoverable_text_is_a_clear_counted_failure(spellm):
    with pytest.raises(SegmentationError, match=r"starts with '!': it is not in the alphabet"):
        spellm.score("Stop", "!")
    results = score_requests(spellm, [("Stop", "!"), ("The cat", " sat")], raise_on_failure=False)
    assert results[0].failure is not None and results[0].logprob == -math.inf
    assert results[1].failure is None and math.isfinite(results[1].logprob)


def test_batched_scores_equal_one_by_one(spellm):
    requests = [("The cat", " sat on"), ("It was", " beautiful"), ("a", " b c d e f")]
    batched = score_requests(spellm, requests, batch_size=3)
    single = [spellm.score(*r) for r in requests]
    for b, s in zip(batched, single):
        assert b.logprob == pytest.approx(s.logprob, abs=1e-4) and b.is_greedy == s.is_greedy


def test_is_greedy_when_every_head_argmax_spells_the_continuation(tiny_teacher):
    model = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=4)
    with torch.no_grad():  # every position predicts " sat": the heads ignore the hidden state
        model.heads.weight.zero_()
        model.heads.bias.fill_(-30.0)
        for i, symbol in enumerate(_symbols(" sat", 4)):
            model.heads.bias[i, symbol] = 30.0
    for mode in ("product", "vocab_normalized"):
        hit = model.score("The cat", " sat", mode=mode)
        assert hit.is_greedy and hit.logprob == pytest.approx(0.0, abs=1e-3)
        miss = model.score("The cat", " sat sat", mode=mode)  # the second " sat" is predicted too
        assert miss.is_greedy
        other = model.score("The cat", " on", mode=mode)
        assert not other.is_greedy and other.logprob < -50


def test_eos_is_scored_as_the_eos_symbol(spellm):
    eos = spellm.tokenizer.eos_token_id
    assert spellm.spelling.table[eos].tolist() == [EOS, PAD, PAD, PAD]
    segments, _ = segment(spellm.spelling, [eos])
    assert segments == [eos]


def test_teacher_marginal_source_equals_the_marginals_by_brute_force(spellm):
    """source=teacher_marginals scores with q_i(c) = sum of p_T(v) over spellable v with S[v, i] = c."""
    context, continuation = "The cat", " sat"
    context_ids, (target,) = encode_pair(spellm.tokenizer, context, continuation)
    with torch.no_grad():
        hidden = spellm.causal_lm.base_model(torch.tensor([context_ids])).last_hidden_state[0, -1]
        probs = torch.softmax(spellm.teacher_logits(hidden).double(), -1)
    table, spellable = spellm.spelling.table, spellm.spelling.spellable
    spell_mass = probs[spellable].sum()
    expected = 0.0
    for i, symbol in enumerate(table[target].tolist()):
        same_symbol = spellable & (table[:, i] == symbol)
        expected += math.log(probs[same_symbol].sum().item() / spell_mass.item())

    result = score_requests(spellm, [(context, continuation)], source="teacher_marginals")[0]
    assert result.logprob == pytest.approx(expected, abs=1e-4)
    assert result.logprob != pytest.approx(spellm.score(context, continuation).logprob, abs=1e-2)
    with pytest.raises(ValueError, match=r"source=oracle is unknown"):
        score_requests(spellm, [(context, continuation)], source="oracle")
