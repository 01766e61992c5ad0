"""The k heads are k distinct parameter sets, and the fused matmul equals k separate ones."""

import torch
import torch.nn.functional as F

from spellm_exp.core.charset import EOS, PAD, Alphabet, CharsetKind, SpellingTable, TokenSpellings
from spellm_exp.core.heads import CharHeads

K, SYMBOLS, D = 4, 7, 16


def _heads(seed=0):
    torch.manual_seed(seed)
    heads = CharHeads(K, SYMBOLS, D)
    torch.nn.init.normal_(heads.bias)
    return heads


def test_fused_equals_k_separate_linear_maps():
    heads, hidden = _heads(), torch.randn(3, 5, D)
    separate = torch.stack([F.linear(hidden, heads.weight[i], heads.bias[i]) for i in range(K)], dim=-2)
    torch.testing.assert_close(heads(hidden), separate)


def test_changing_one_head_leaves_the_others_unchanged():
    heads, hidden = _heads(), torch.randn(2, D)
    before = heads(hidden).detach()
    with torch.no_grad():
        heads.weight[2] += 1.0
    after = heads(hidden).detach()
    for i in range(K):
        assert torch.equal(before[:, i], after[:, i]) == (i != 2)


def test_a_loss_on_one_head_only_moves_that_head():
    heads = _heads()
    heads(torch.randn(2, D))[:, 1].logsumexp(-1).sum().backward()
    grads = heads.weight.grad.abs().sum(dim=(1, 2))
    assert grads[1] > 0 and (grads[[0, 2, 3]] == 0).all()


def test_unembedding_mean_init_by_hand():
    # tokens: 0 = EOS, 1 = "a", 2 = "ab", 3 = "b"; alphabet PAD, EOS, a, b
    spelled = TokenSpellings(pieces=(None, b"a", b"ab", b"b"), end_ids=frozenset({0}), eos_id=0)
    table = SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b")), k=2)
    unembedding = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [2.0, 6.0]])
    heads = CharHeads(2, 4, 2)
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
