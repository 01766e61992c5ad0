"""Property tests of the pure distillation losses."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spellm_exp.core.charset import EOS, PAD
from spellm_exp.core.heads import Factorised, Mixture
from spellm_exp.core.losses import (
    Targets,
    chunked_head_marginals,
    distillation_loss,
    head_marginals,
    marginal_kl,
    resolve_objective,
    spelled_cross_entropy,
    token_kl,
)

# vocabulary: 0 = EOS, 1 = "a", 2 = "ab", 3 = "b", 4 = unspellable; symbols PAD, EOS, a, b
A, B = 2, 3
TABLE = torch.tensor([[EOS, PAD], [A, PAD], [A, B], [B, PAD], [PAD, PAD]])
SPELLABLE = torch.tensor([True, True, True, True, False])


def test_marginals_by_hand():
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2]])
    targets = head_marginals(probs.log(), TABLE, SPELLABLE, n_symbols=4)
    renorm = probs[0, :4] / 0.8
    expected = torch.tensor([[[0.0, renorm[0], renorm[1] + renorm[2], renorm[3]],
                              [renorm[0] + renorm[1] + renorm[3], 0.0, 0.0, renorm[2]]]])
    torch.testing.assert_close(targets.marginals, expected)
    torch.testing.assert_close(targets.dropped_mass, torch.tensor([0.2]))
    assert targets.valid.tolist() == [True]


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.1, 30.0), temperature=st.floats(0.5, 4.0), seed=st.integers(0, 2**16))
def test_the_target_entropy_is_that_of_the_renormalised_spellable_distribution(scale, temperature, seed):
    """H(q) of q = softmax(z / T) restricted to the spellable tokens and renormalised, by its definition; 0 where
    nothing spells."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, generator=generator) * scale
    logits[2, :4] = -1e4  # the third position puts (numerically) all its mass on the unspellable token
    targets = head_marginals(logits, TABLE, SPELLABLE, n_symbols=4, temperature=temperature)
    q = torch.softmax(logits[:2].double() / temperature, -1)[:, :4]
    q = q / q.sum(-1, keepdim=True)
    expected = -(q * q.clamp(min=1e-300).log()).sum(-1)
    torch.testing.assert_close(targets.entropy[:2].double(), expected, atol=1e-4, rtol=1e-4)
    assert targets.entropy[2] == 0.0 and not targets.valid[2]


def test_a_position_with_no_spellable_mass_is_masked_out():
    logits = torch.tensor([[-1e4, -1e4, -1e4, -1e4, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    targets = head_marginals(logits, TABLE, SPELLABLE, n_symbols=4)
    assert targets.valid.tolist() == [False, True]
    student = torch.randn(2, 2, 4)
    both = distillation_loss(student, targets)
    only_valid = distillation_loss(student[1:], Targets(targets.marginals[1:], targets.dropped_mass[1:],
                                                        targets.valid[1:]))
    torch.testing.assert_close(both.total, only_valid.total)


logits_strategy = st.integers(min_value=0, max_value=10_000)


@settings(max_examples=30, deadline=None)
@given(seed=logits_strategy, temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_kl_is_non_negative_and_zero_at_the_target(seed, temperature):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(6, 5, generator=generator) * 3
    targets = head_marginals(teacher, TABLE, SPELLABLE, n_symbols=4)
    student = torch.randn(6, 2, 4, generator=generator) * 3
    assert (marginal_kl(student, targets.marginals, temperature) >= -1e-6).all()
    exact = torch.log(targets.marginals.clamp(min=1e-30)) * temperature  # softmax(exact / T) = q
    assert marginal_kl(exact, targets.marginals, temperature).abs().max() < 1e-5


@settings(max_examples=20, deadline=None)
@given(seed=logits_strategy)
def test_gradient_is_student_minus_target(seed):
    generator = torch.Generator().manual_seed(seed)
    targets = head_marginals(torch.randn(3, 5, generator=generator), TABLE, SPELLABLE, n_symbols=4)
    student = torch.randn(3, 2, 4, generator=generator, requires_grad=True)
    marginal_kl(student, targets.marginals).sum().backward()
    torch.testing.assert_close(student.grad, torch.softmax(student.detach(), -1) - targets.marginals)
    # one gradient step lowers the loss
    with torch.no_grad():
        stepped = student - 0.1 * student.grad
    assert marginal_kl(stepped, targets.marginals).sum() < marginal_kl(student.detach(), targets.marginals).sum()


def test_temperature_one_is_the_plain_kl():
    targets = head_marginals(torch.randn(4, 5), TABLE, SPELLABLE, n_symbols=4)
    student = torch.randn(4, 2, 4)
    log_p = torch.log_softmax(student, -1)
    plain = (targets.marginals * (targets.marginals.clamp(min=1e-12).log() - log_p)).sum(-1)
    torch.testing.assert_close(marginal_kl(student, targets.marginals, 1.0), plain)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 100])
def test_chunked_targets_equal_unchunked(chunk_size):
    hidden, unembedding = torch.randn(7, 8), torch.randn(5, 8)
    whole = head_marginals(hidden @ unembedding.T, TABLE, SPELLABLE, n_symbols=4, temperature=1.5)
    chunked = chunked_head_marginals(hidden, lambda h: h @ unembedding.T, TABLE, SPELLABLE, n_symbols=4,
                                     temperature=1.5, chunk_size=chunk_size)
    for field in ("marginals", "dropped_mass", "valid"):
        torch.testing.assert_close(getattr(chunked, field), getattr(whole, field))


def test_spelled_cross_entropy_masks_unspellable_and_missing_targets():
    student = Factorised(torch.zeros(3, 2, 4))  # uniform: every symbol costs log 4
    ce, per_head = spelled_cross_entropy(student, torch.tensor([2, 4, -100]), TABLE, SPELLABLE)
    torch.testing.assert_close(per_head, torch.full((2,), math.log(4)))  # only the first position counts
    torch.testing.assert_close(ce, torch.tensor(math.log(4)))


def test_ce_weight_adds_the_spelled_cross_entropy():
    targets = head_marginals(torch.randn(3, 5), TABLE, SPELLABLE, n_symbols=4)
    student = torch.randn(3, 2, 4)
    ids = torch.tensor([1, 2, 4])
    plain = distillation_loss(student, targets)
    mixed = distillation_loss(student, targets, ce_weight=0.5, target_ids=ids, table=TABLE, spellable=SPELLABLE)
    log_p = torch.log_softmax(student, -1)
    by_hand = -(log_p[0, 0, A] + log_p[0, 1, PAD] + log_p[1, 0, A] + log_p[1, 1, B]) / 4  # ids 1, 2; 4 does not spell
    torch.testing.assert_close(mixed.ce, by_hand)
    torch.testing.assert_close(mixed.total, plain.total + 0.5 * mixed.ce)
    assert plain.ce is None and plain.total is plain.kl


# --- the token-level objective ---------------------------------------------------------------------
def _string_kl_by_enumeration(teacher_logits, student: Factorised | Mixture):
    """KL(q || p) summed over the spellable tokens, one by one."""
    q = torch.softmax(teacher_logits.double(), -1) * SPELLABLE
    q = q / q.sum(-1, keepdim=True)
    log_p = student.log_prob(TABLE.expand(teacher_logits.shape[0], -1, -1)).double()
    terms = torch.where(q > 0, q * (q.clamp(min=1e-300).log() - log_p), 0.0)
    return terms[:, SPELLABLE].sum(-1)


@settings(max_examples=20, deadline=None)
@given(seed=logits_strategy)
def test_token_kl_is_the_exact_kl_over_vocabulary_strings(seed):
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(4, 5, generator=generator) * 2
    targets = head_marginals(teacher, TABLE, SPELLABLE, n_symbols=4, top_k=5, tail_samples=0)
    factorised = Factorised(torch.randn(4, 2, 4, generator=generator))
    mixture = Mixture(torch.log_softmax(torch.randn(4, 3, generator=generator), -1),
                      torch.log_softmax(torch.randn(4, 3, 2, 4, generator=generator), -1))
    for student in (factorised, mixture):  # factorised: by the marginals; mixture: top_k = |V| strings
        torch.testing.assert_close(token_kl(student, targets, TABLE).double(),
                                   _string_kl_by_enumeration(teacher, student), atol=1e-5, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(seed=logits_strategy)
def test_token_kl_of_linear_heads_is_the_marginal_loss_up_to_a_constant(seed):
    """KL(q || prod p_i) = k x mean_i KL(q_i || p_i) + (sum_i H(q_i) - H(q)), whatever the student."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(6, 5, generator=generator) * 2
    targets = head_marginals(teacher, TABLE, SPELLABLE, n_symbols=4)
    q_i = targets.marginals
    constant = -(q_i * q_i.clamp(min=1e-30).log()).sum((-1, -2)) - targets.entropy
    for _ in range(3):
        student = torch.randn(6, 2, 4, generator=generator)
        token = distillation_loss(Factorised(student), targets, objective="token", table=TABLE)
        marginal = distillation_loss(student, targets, objective="marginal", table=TABLE)
        torch.testing.assert_close(token.kl, 2 * marginal.kl + constant.mean(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(marginal.token_kl, token.kl)  # logged next to the marginal objective


def test_tail_samples_estimate_the_rest_without_bias():
    """With top_k < |V|, the sampled tail term's mean over many draws is the exact KL."""
    torch.manual_seed(0)
    teacher = torch.randn(1, 5) * 0.5
    mixture = Mixture(torch.log_softmax(torch.randn(1, 2), -1), torch.log_softmax(torch.randn(1, 2, 2, 4), -1))
    draws = [token_kl(mixture, head_marginals(teacher, TABLE, SPELLABLE, 4, top_k=1, tail_samples=64), TABLE)
             for _ in range(200)]
    estimate = torch.stack(draws).mean()
    assert estimate.item() == pytest.approx(_string_kl_by_enumeration(teacher, mixture).item(), abs=5e-3)


def test_objective_auto_and_a_marginal_objective_for_a_mixture():
    assert resolve_objective("auto", "linear") == "marginal" and resolve_objective("auto", "mlp") == "marginal"
    assert resolve_objective("auto", "mixture") == "token" and resolve_objective("auto", "autoregressive") == "token"
    assert resolve_objective("token", "linear") == "token"
    with pytest.raises(ValueError, match=r"loss.objective=marginal fits only heads that factorise"):
        resolve_objective("marginal", "mixture")


@settings(max_examples=10, deadline=None)
@given(seed=logits_strategy)
def test_sparse_marginals_equal_a_direct_sum_over_the_vocabulary(seed):
    generator = torch.Generator().manual_seed(seed)
    vocab, k, symbols = 50, 5, 7
    lengths = torch.randint(0, k + 1, (vocab,), generator=generator)  # 0: does not spell
    table = torch.randint(2, symbols, (vocab, k), generator=generator)
    table[torch.arange(k) >= lengths.unsqueeze(1)] = PAD
    spellable = lengths > 0
    logits = torch.randn(4, vocab, generator=generator) * 2
    targets = head_marginals(logits, table, spellable, symbols)
    probs = torch.softmax(logits, -1) * spellable
    probs = probs / probs.sum(-1, keepdim=True)
    direct = torch.zeros(4, k, symbols)
    for v in range(vocab):
        for i in range(k):
            direct[:, i, table[v, i]] += probs[:, v]
    torch.testing.assert_close(targets.marginals, direct, atol=1e-5, rtol=1e-5)


def test_targets_and_kl_stay_fp32_inside_a_bf16_autocast_step():
    """A bf16-mixed step autocasts matmuls; the targets' products and the KL must not be among them."""
    torch.manual_seed(0)
    table = torch.randint(0, 6, (40, 3))
    spellable = torch.rand(40) > 0.2
    logits, student = torch.randn(8, 40) * 3, torch.randn(8, 3, 6)
    plain = head_marginals(logits, table, spellable, n_symbols=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head_marginals(logits, table, spellable, n_symbols=6)
        kl = marginal_kl(student.bfloat16(), plain.marginals)
        ce, _ = spelled_cross_entropy(Factorised(student.bfloat16()), torch.arange(8), table, spellable)
    assert mixed.marginals.dtype == mixed.dropped_mass.dtype == kl.dtype == ce.dtype == torch.float32
    assert torch.equal(mixed.marginals, plain.marginals) and torch.equal(mixed.dropped_mass, plain.dropped_mass)
    torch.testing.assert_close(kl, marginal_kl(student.bfloat16().float(), plain.marginals))


def test_a_bf16_spelling_matrix_gives_the_same_targets():
    """FSDP's bf16-mixed casts floating buffers, the spelling matrix among them; its 0/1 entries are exact."""
    from spellm_exp.core.losses import spelling_matrix

    logits = torch.randn(3, 5)
    matrix = spelling_matrix(TABLE, 4)
    plain = head_marginals(logits, TABLE, SPELLABLE, n_symbols=4, matrix=matrix)
    cast = head_marginals(logits, TABLE, SPELLABLE, n_symbols=4, matrix=matrix.to(torch.bfloat16))
    assert torch.equal(plain.marginals, cast.marginals)
