"""Seen tokens (heads.context_tokens): which tokens each position has seen, their exact share of the ceiling, and
scoring and the forward pass agreeing on them."""

import math

import pytest
import torch

from spellm_exp.config import HeadKind, HeadsConfig
from spellm_exp.core.charset import Alphabet, CharsetKind
from spellm_exp.core.context import SeenTokens, token_context
from spellm_exp.core.scoring import encode_pair, score_requests
from spellm_exp.core.spellm import SpeLLM

LETTERS = Alphabet(CharsetKind.chars, tuple(" abcdefghijklmnopqrstuvwxyzT."))


def test_token_context_by_hand():
    """Each group's distinct eligible tokens, seen from their first position on; padding and ineligible ids never."""
    ids = torch.tensor([[5, 7, 5, 9, 3], [2, 2, 4, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    eligible = torch.ones(10, dtype=torch.bool)
    eligible[9] = False
    table = torch.arange(10).unsqueeze(1).repeat(1, 3)  # token t spells (t, t, t)
    rows = torch.arange(10.0).unsqueeze(1).repeat(1, 2)
    context = token_context(ids, eligible, table, rows, mask)
    assert context.ids[0].tolist() == [3, 5, 7] and context.ids[1, :2].tolist() == [2, 4]
    # first seen: 5 at 0, 7 at 1, 3 at 4 (ids sorted: 3, 5, 7)
    assert context.visible[0].int().tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 1], [0, 1, 1], [1, 1, 1]]
    # the second row: 2 from 0, 4 from 2, the padding slot never (0 is masked out)
    assert context.visible[1].int().tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert torch.equal(context.strings[0], table[[3, 5, 7]])
    assert torch.equal(context.rows[0, :, 0], torch.tensor([3.0, 5.0, 7.0]))
    hidden = torch.ones(2 * 5, 2)
    logits = context.logits(hidden)
    assert logits[4].tolist() == [6.0, 10.0, 14.0] and math.isinf(logits[0, 0]) and logits[0, 1] == 10.0
    assert context.select(slice(3, 5)).visible.shape == (2, 2, 3)


def test_seen_tokens_grow_by_first_occurrences_and_match_the_whole_history():
    """A decode loop's buffers (SeenTokens): after the prompts and each fed id, the visible slots hold exactly the
    distinct eligible tokens that token_context finds at the last position of prompt + fed ids, once each."""
    ids = torch.tensor([[5, 7, 5, 9, 3], [0, 0, 2, 2, 4]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left-padded, as the decoder feeds them
    eligible = torch.ones(10, dtype=torch.bool)
    eligible[9] = False
    table = torch.arange(10).unsqueeze(1).repeat(1, 3)
    rows = torch.arange(10.0).unsqueeze(1).repeat(1, 2)
    seen = SeenTokens(2, 8, eligible, table, rows)
    seen.load(token_context(ids, eligible, table, rows, mask))
    # per step, the ids fed to the two rows: 7 and 2 seen in the prompt; 6 and 1 twice; 9 ineligible; 11 past |V|
    fed = torch.tensor([[7, 8], [6, 6], [6, 2], [9, 1], [11, 1]])
    for step in fed:
        seen.add(step)
    assert seen.slot.item() == 3 + 5 == seen.capacity
    context = seen.context()
    for row, expected in enumerate([{3, 5, 7, 6}, {2, 4, 8, 6, 1}]):
        visible = context.ids[row][context.visible[row, 0]].tolist()
        assert sorted(visible) == sorted(expected)  # each once
        whole = torch.cat([ids[row][mask[row].bool()], fed[:, row]])
        whole = whole[whole < 10].unsqueeze(0)
        assert set(token_context(whole, eligible, table, rows).ids[0].tolist()) == expected
    assert torch.equal(context.strings[context.visible[:, 0]], table[context.ids[context.visible[:, 0]]])
    hidden = torch.ones(2, 2)
    logits = context.logits(hidden)
    assert logits[0][context.visible[0, 0]].sort().values.tolist() == [6.0, 10.0, 12.0, 14.0]
    with pytest.raises(ValueError, match="not 3 rows"):
        seen.load(token_context(torch.ones(3, 2, dtype=torch.long), eligible, table, rows))
    seen.load(token_context(ids, eligible, table, rows, mask))  # refilled in place: the same buffers, reset
    assert seen.slot.item() == 3 and seen.context().visible.sum() == 3 + 2


PROMPT, ANSWER = "The zebra quietly ate. Then the", " zebra"


@pytest.fixture(scope="module")
def seen(tiny_teacher):
    """A shortlist SpeLLM that scores seen tokens; its 5-token list holds none of the answer's tokens."""
    teacher = tiny_teacher("tiny_llama")
    context_ids, continuation = encode_pair(teacher.tokenizer, PROMPT, ANSWER)
    counts = torch.zeros(teacher.info.vocab_size)
    counts[torch.tensor(context_ids[2:4])] = 1.0  # the list: two of the prompt's tokens (not the answer), the lowest ids
    spellm = SpeLLM.build(teacher, LETTERS, k=8, counts=counts,
                          heads=HeadsConfig(kind=HeadKind.shortlist, shortlist=5, context_tokens=True))
    return spellm, context_ids, continuation


def test_the_seen_ceiling_scores_seen_tokens_exactly_and_leaves_them_out_of_the_rest(seen):
    """teacher_shortlist with seen tokens: p(S[t]) = q(t) [t seen or listed] + q(rest) prod_i r_i(S[t]_i), the rest
    being every token neither listed nor seen."""
    spellm, context_ids, continuation = seen
    inputs = torch.tensor([context_ids + continuation[:-1]])
    position = len(context_ids) - 1  # predicts the answer's first token
    with torch.no_grad():
        hidden = spellm.backbone(inputs)[0][0, position:position + 1]
        context = spellm.token_context(inputs).select(slice(position, position + 1))
        ceiling = spellm.strings(hidden, "teacher_shortlist", context)
        q = torch.softmax(spellm.teacher_logits(hidden).double().masked_fill(~spellm.spellable, -math.inf), -1)[0]
    table, listed = spellm.spelling_table, spellm.heads.token_ids.tolist()
    seen_ids = context.ids[0][context.visible[0, 0]].tolist()
    assert seen_ids and not set(seen_ids) & set(listed)
    assert set(seen_ids) <= set(context_ids) and continuation[0] in seen_ids  # the answer repeats a prompt token
    rest = q.clone()
    rest[listed + seen_ids] = 0
    rest_mass = rest.sum()
    rest = rest / rest_mass
    for t in seen_ids[:4] + [continuation[0]]:
        if int((table == table[t]).all(-1).sum()) > 1:
            continue  # a string several tokens spell: the formula above sums them
        product = 1.0
        for i, symbol in enumerate(table[t].tolist()):
            product *= rest[table[:, i] == symbol].sum().item()
        expected = q[t].item() * (t in listed or t in seen_ids) + rest_mass.item() * product
        got = ceiling.log_prob(table[[t]].unsqueeze(0))[0, 0].item()
        assert got == pytest.approx(math.log(expected), rel=1e-4)


def test_scoring_and_the_forward_pass_agree_on_seen_tokens_and_use_them(seen):
    spellm, context_ids, continuation = seen
    (scored,) = score_requests(spellm, [(PROMPT, ANSWER)])
    inputs = torch.tensor([context_ids + continuation[:-1]])
    with torch.no_grad():
        strings = spellm(inputs).strings
        next_ids = inputs[0, 1:].tolist() + [continuation[-1]]  # what each position predicts
        per_position = strings.log_prob(spellm.spelling_table[next_ids].unsqueeze(1)).squeeze(1)
    start = len(context_ids) - 1
    assert scored.logprob == pytest.approx(per_position[start:].sum().item(), rel=1e-5)
    spellm.heads.context_tokens = False
    try:
        (without,) = score_requests(spellm, [(PROMPT, ANSWER)])
    finally:
        spellm.heads.context_tokens = True
    assert scored.logprob != pytest.approx(without.logprob)
