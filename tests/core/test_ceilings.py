"""The ceiling rows: distributions built from the teacher's own next-token distribution, checked by hand."""

import math

import pytest
import torch

from spellm_exp.config import HeadKind, HeadsConfig
from spellm_exp.core.ceilings import (
    mixture_components,
    teacher_marginals,
    teacher_mixture,
    teacher_shortlist,
)
from spellm_exp.core.charset import Alphabet, CharsetKind
from spellm_exp.evaluation.harness import SpeLLMEvalError, SpeLLMHarnessLM
from spellm_exp.experiments.ablation import check_ceilings
from spellm_exp.core.scoring import encode_pair, score_requests
from spellm_exp.core.spellm import SpeLLM

LETTERS = Alphabet(CharsetKind.chars, tuple(" abcdefghijklmnopqrstuvwxyzT."))


@pytest.fixture(scope="module")
def setting(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=4)
    context_ids, _ = encode_pair(spellm.tokenizer, "The cat", " sat")
    with torch.no_grad():
        hidden = spellm.causal_lm.base_model(torch.tensor([context_ids])).last_hidden_state[0, -1:]
        logits = spellm.teacher_logits(hidden).double()
    table, spellable = spellm.spelling_table, spellm.spellable
    q = torch.softmax(logits, -1)[0] * spellable
    return spellm, logits.float(), table, spellable, q / q.sum()


def _unique_spellings(table, spellable, ids):
    return [t for t in ids if spellable[t] and int((table == table[t]).all(-1).sum()) == 1]


def test_a_mixture_with_every_token_as_a_component_is_the_teacher_itself(setting):
    spellm, logits, table, spellable, q = setting
    everything = int(spellable.sum()) + 1
    mixture = teacher_mixture(logits, table, spellable, LETTERS.size, everything)
    ids = _unique_spellings(table, spellable, q.topk(40).indices.tolist())
    scored = mixture.log_prob(table[ids].unsqueeze(0))[0]
    torch.testing.assert_close(scored.double(), q[ids].log(), atol=1e-4, rtol=1e-4)


def test_teacher_mixture_by_hand(setting):
    """M = 3: q(t1) [s = S[t1]] + q(t2) [s = S[t2]] + (1 - q(t1) - q(t2)) prod_i r_i(s_i), r the rest's marginals."""
    spellm, logits, table, spellable, q = setting
    mixture = teacher_mixture(logits, table, spellable, LETTERS.size, 3)
    top = q.topk(2).indices.tolist()
    rest = q.clone()
    rest[top] = 0
    rest_mass = rest.sum()
    rest = rest / rest_mass
    candidates = _unique_spellings(table, spellable, q.topk(10).indices.tolist())
    for t in candidates:
        product = 1.0
        for i, symbol in enumerate(table[t].tolist()):
            product *= rest[table[:, i] == symbol].sum().item()
        expected = q[t].item() * (t in top) + rest_mass.item() * product
        assert mixture.log_prob(table[[t]].unsqueeze(0))[0, 0].item() == pytest.approx(math.log(expected), rel=1e-4)
    # its greedy string is the likeliest of its components' own strings
    greedy = mixture.log_prob(mixture.greedy().unsqueeze(1))[0, 0]
    assert greedy >= mixture.log_prob(table[top].unsqueeze(0)).max()


def test_vocabulary_scores_of_the_ceilings_match_their_string_scores(setting):
    spellm, logits, table, spellable, q = setting
    for strings in (teacher_marginals(logits, table, spellable, LETTERS.size),
                    teacher_mixture(logits, table, spellable, LETTERS.size, 4)):
        vocab = strings.vocab_log_probs(table, spellable)
        ids = _unique_spellings(table, spellable, q.topk(30).indices.tolist())
        torch.testing.assert_close(vocab[0, ids], strings.log_prob(table[ids].unsqueeze(0))[0], atol=1e-5, rtol=1e-5)


def test_the_ceilings_score_through_the_harness_path(setting):
    spellm = setting[0]
    requests = [("The cat", " sat"), ("Once upon a", " time")]
    marginals = score_requests(spellm, requests, source="teacher_marginals")
    mixture = score_requests(spellm, requests, source="teacher_mixture_4")
    assert all(math.isfinite(r.logprob) for r in marginals + mixture)
    assert [r.logprob for r in mixture] != pytest.approx([r.logprob for r in marginals])


def test_mixture_names():
    assert mixture_components("teacher_mixture_8") == 8 and mixture_components("teacher_marginals") is None
    with pytest.raises(ValueError, match=r"needs M >= 2"):
        mixture_components("teacher_mixture_1")


@pytest.fixture(scope="module")
def shortlisted(tiny_teacher, setting):
    """A shortlist SpeLLM on the same teacher whose shortlist is the teacher's 5 likeliest tokens here (as counts)."""
    q = setting[4]
    counts = torch.zeros(q.shape[0])
    counts[_unique_spellings(setting[2], setting[3], q.topk(20).indices.tolist())[:5]] = 1.0
    return SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=4, heads=HeadsConfig(kind=HeadKind.shortlist,
                                                                                     shortlist=5), counts=counts)


def test_teacher_shortlist_by_hand(setting, shortlisted):
    """p(s) = q(l) [s = S[l]] for the shortlist tokens l, + q(rest) prod_i r_i(s_i), r the rest's marginals."""
    _, logits, table, spellable, q = setting
    heads = shortlisted.heads
    ceiling = teacher_shortlist(logits, table, spellable, LETTERS.size, heads)
    listed = heads.token_ids.tolist()
    rest = q.clone()
    rest[listed] = 0
    rest_mass = rest.sum()
    rest = rest / rest_mass
    torch.testing.assert_close(ceiling.log_weights[0].double().exp(), torch.cat([q[listed], rest_mass.view(1)]),
                               atol=1e-6, rtol=1e-5)
    for t in _unique_spellings(table, spellable, q.topk(12).indices.tolist()):
        product = 1.0
        for i, symbol in enumerate(table[t].tolist()):
            product *= rest[table[:, i] == symbol].sum().item()
        expected = q[t].item() * (t in listed) + rest_mass.item() * product
        assert ceiling.log_prob(table[[t]].unsqueeze(0))[0, 0].item() == pytest.approx(math.log(expected), rel=1e-4)


def test_the_shortlist_weights_hybrid_keeps_the_teachers_weights_and_the_heads_rest(setting, shortlisted):
    with torch.no_grad():
        hidden = shortlisted.causal_lm.base_model(torch.tensor([encode_pair(shortlisted.tokenizer, "The cat", " sat")[0]]
                                                               )).last_hidden_state[0, -1:]
        ceiling = shortlisted.strings(hidden, "teacher_shortlist")
        hybrid = shortlisted.strings(hidden, "teacher_shortlist_weights")
        heads = shortlisted.strings(hidden, "heads")
    torch.testing.assert_close(hybrid.log_weights, ceiling.log_weights)
    torch.testing.assert_close(hybrid.rest.log_probs, heads.rest.log_probs)
    assert not torch.allclose(hybrid.rest.log_probs, ceiling.rest.log_probs)
    requests = [("The cat", " sat"), ("Once upon a", " time")]
    scores = {source: [r.logprob for r in score_requests(shortlisted, requests, source=source)]
              for source in ("heads", "teacher_shortlist", "teacher_shortlist_weights")}
    assert all(math.isfinite(x) for values in scores.values() for x in values)
    assert scores["teacher_shortlist"] != pytest.approx(scores["teacher_shortlist_weights"])


def test_the_shortlist_ceilings_need_shortlist_heads(setting):
    linear = setting[0]
    with pytest.raises(ValueError, match=r"needs a SpeLLM with shortlist heads"):
        score_requests(linear, [("The cat", " sat")], source="teacher_shortlist")
    with pytest.raises(SpeLLMEvalError, match=r"needs a checkpoint with shortlist heads"):
        SpeLLMHarnessLM(variant="teacher_shortlist_weights", spellm=linear)


def test_the_ablation_checks_its_ceiling_names_before_training():
    check_ceilings(["teacher_marginals", "teacher_mixture_8"], ["teacher_shortlist", "teacher_shortlist_weights"])
    with pytest.raises(ValueError, match=r"put it in variant_ceilings"):
        check_ceilings(["teacher_shortlist"], [])
    with pytest.raises(ValueError, match=r"needs M >= 2"):
        check_ceilings(["teacher_mixture_1"], [])
    with pytest.raises(ValueError, match=r"variant_ceilings: teacher_marginals is unknown"):
        check_ceilings([], ["teacher_marginals"])
