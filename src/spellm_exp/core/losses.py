"""Distillation losses as pure functions of tensors (no model code).

Per position, the teacher's next-token distribution is restricted to the spellable tokens and
renormalised (the dropped mass is reported). Head i's target is the marginal

    q_i(c) = sum over spellable v with S[v, i] = c of p_T(v)

and the loss is the mean over heads of KL(q_i || p_i): among distributions that factorise over
the k positions, the product of these marginals is the closest to p_T in KL(p_T || .). The
targets are one sparse-dense product, q = M p, with M the [k*|Sigma|, |V|] 0/1 spelling matrix
restricted to non-PAD symbols; q_i(PAD) is what remains of the mass. No N x |V| x k tensor
(and, with `teacher_logits_fn`, no N x |V| tensor beyond one chunk) is ever materialised.

The token-level objective is the exact forward KL over the teacher's vocabulary strings,

    KL(q || p) = sum_t q(t) (log q(t) - log p(S[t])) = -H(q) - sum_t q(t) log p(S[t]).

For heads that factorise over positions the cross term is exactly -sum_i sum_c q_i(c) log p_i(c), so
it is the marginal loss summed over heads, plus sum_i H(q_i) - H(q), a constant. For the other head
types the cross term is taken over the teacher's top-K tokens exactly, and over the rest of its mass
by tokens sampled from it (an unbiased estimate); with K = |V| it is exact. A shortlist whose rest is a
product (`loss.exact_rest`) takes the rest's tokens R out of that estimate: their part of the cross term,
-sum_{t in R} q(t) (log w_rest + sum_i log p_i(S[t]_i)), is exactly -q(R) log w_rest - sum_i sum_c
q^R_i(c) log p_i(c), with q^R_i the teacher's marginals over R alone (one more sparse product).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spellm_exp.config import HeadKind, LossObjective
from spellm_exp.core.charset import PAD
from spellm_exp.core.heads import FACTORISED_KINDS, Factorised, StringDistribution, spelling_matrix

_EPS = 1e-12


@dataclass
class Targets:
    marginals: torch.Tensor  # [N, k, |Sigma|], fp32, rows sum to 1 where `valid`
    dropped_mass: torch.Tensor  # [N], teacher probability on tokens that do not spell
    valid: torch.Tensor  # [N] bool: some teacher mass spells
    entropy: torch.Tensor | None = None  # [N], H(q) of the renormalised spellable distribution
    top_ids: torch.Tensor | None = None  # [N, K], the K most likely spellable tokens (token objective)
    top_probs: torch.Tensor | None = None  # [N, K], their q
    tail_ids: torch.Tensor | None = None  # [N, T], tokens drawn from q outside the top K
    tail_mass: torch.Tensor | None = None  # [N], q outside the top K
    rest_marginals: torch.Tensor | None = None  # [N, k, |Sigma|], sum over rest tokens t with S[t, i] = c of q(t)
    rest_mass: torch.Tensor | None = None  # [N], q(R): the rest tokens' mass (top and tail then leave them out)

    FIELDS = ("marginals", "dropped_mass", "valid", "entropy", "top_ids", "top_probs", "tail_ids", "tail_mass",
              "rest_marginals", "rest_mass")

    def rows(self, index) -> Targets:
        return Targets(*(None if getattr(self, f) is None else getattr(self, f)[index] for f in self.FIELDS))

    @classmethod
    def cat(cls, parts: list[Targets]) -> Targets:
        return cls(*(None if getattr(parts[0], f) is None else torch.cat([getattr(p, f) for p in parts])
                     for f in cls.FIELDS))


def in_fp32(loss_fn: Callable) -> Callable:
    """Run `loss_fn` with autocast off: method.md keeps the softmax, the marginals and the KL in fp32,
    also inside a bf16-mixed training step (whose autocast would otherwise cast their matmuls to bf16,
    and CSR products have no bf16 kernel). Inputs are upcast inside; the first one names the device."""

    @functools.wraps(loss_fn)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return loss_fn(first, *args, **kwargs)

    return wrapper


@in_fp32
def head_marginals(teacher_logits: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor,
                   n_symbols: int, temperature: float = 1.0, matrix: torch.Tensor | None = None,
                   top_k: int = 0, tail_samples: int = 0, rest_tokens: torch.Tensor | None = None) -> Targets:
    """[N, |V|] teacher logits -> per-head marginals of the renormalised spellable distribution, its
    entropy, and (top_k > 0) its top_k tokens and `tail_samples` draws from the rest, for the token objective.

    `matrix` is `spelling_matrix(table, n_symbols)`, passed in to build it once per table. `rest_tokens` ([|V|]
    bool, a shortlist's rest: `ShortlistHeads.rest_tokens`) adds the marginals over those tokens alone and draws
    the top and tail tokens from the others only.
    """
    if matrix is None:
        matrix = spelling_matrix(table, n_symbols)
    scaled = teacher_logits.float() / temperature
    probs = torch.softmax(scaled, dim=-1)
    if matrix.dtype != probs.dtype:  # FSDP's bf16 mixed precision casts floating buffers; 0/1 stay exact
        matrix = matrix.to(probs.dtype)
    spell_mass = probs @ spellable.to(probs.dtype)
    k = table.shape[1]
    valid = spell_mass > _EPS
    q = probs * spellable / spell_mass.clamp(min=_EPS).unsqueeze(-1)
    # the rest of each head's mass is on PAD (tokens shorter than i + 1); 0 where nothing spells
    marginals = _marginals_with_pad(matrix, q, valid.to(q.dtype), k, n_symbols)
    # H(q) = log Z_spellable - sum_t q_t z_t (log q_t = z_t - log Z_spellable on spellable tokens): one multiply-add
    # pass over |V| instead of a log of every probability (a third of the targets' time at |V| = 262,144)
    log_spellable = torch.logsumexp(scaled, -1) + torch.log(spell_mass.clamp(min=_EPS))
    entropy = torch.where(valid, log_spellable - (q * scaled).sum(-1), 0.0).clamp(min=0.0)
    targets = Targets(marginals, 1.0 - spell_mass, valid, entropy)
    if rest_tokens is not None:
        q_rest = q * rest_tokens.to(q.dtype)
        targets.rest_mass = q_rest.sum(-1)
        targets.rest_marginals = _marginals_with_pad(matrix, q_rest, targets.rest_mass, k, n_symbols)
        q = q - q_rest
    if top_k > 0:
        _add_top_and_tail(targets, q, top_k, tail_samples)
    return targets


def _marginals_with_pad(matrix: torch.Tensor, weights: torch.Tensor, mass: torch.Tensor, k: int,
                        n_symbols: int) -> torch.Tensor:
    """[N, k, S]: sum over tokens t with S[t, i] = c of weights[:, t]; PAD gets what the characters leave of `mass`."""
    marginals = torch.sparse.mm(matrix, weights.T.contiguous()).T.reshape(-1, k, n_symbols)
    marginals[:, :, PAD] = (mass.unsqueeze(-1) - marginals.sum(-1)).clamp(min=0.0)
    return marginals


def _add_top_and_tail(targets: Targets, q: torch.Tensor, top_k: int, tail_samples: int) -> None:
    top_probs, top_ids = q.topk(min(top_k, q.shape[-1]), dim=-1)
    rest = q.scatter(-1, top_ids, 0.0)
    tail_mass = rest.sum(-1)
    targets.top_ids, targets.top_probs = top_ids, top_probs
    targets.tail_mass = tail_mass if tail_samples > 0 else torch.zeros_like(tail_mass)
    if tail_samples > 0:
        # rows with no mass left draw the top token: their weight (tail_mass) is 0 anyway
        empty = torch.zeros_like(rest).scatter(-1, top_ids[:, :1], 1.0)
        rest = torch.where((tail_mass > _EPS).unsqueeze(-1), rest, empty)
        targets.tail_ids = torch.multinomial(rest, tail_samples, replacement=True)
    else:  # no estimate of the rest: the top tokens' mass alone (reported through tail_mass = 0)
        targets.tail_ids = top_ids[:, :0]


def chunked_head_marginals(hidden: torch.Tensor, teacher_logits_fn: Callable[[torch.Tensor], torch.Tensor],
                           table: torch.Tensor, spellable: torch.Tensor, n_symbols: int,
                           temperature: float = 1.0, chunk_size: int = 256,
                           matrix: torch.Tensor | None = None, top_k: int = 0, tail_samples: int = 0,
                           rest_tokens: torch.Tensor | None = None) -> Targets:
    """The same targets from hidden states [N, d], computing teacher logits `chunk_size` rows at a time."""
    if matrix is None:
        matrix = spelling_matrix(table, n_symbols)
    return Targets.cat([head_marginals(teacher_logits_fn(hidden[start:start + chunk_size]), table, spellable,
                                       n_symbols, temperature, matrix, top_k, tail_samples, rest_tokens)
                        for start in range(0, hidden.shape[0], chunk_size)])


@in_fp32
def marginal_kl(student_logits: torch.Tensor, marginals: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(q_i || p_i) per position and head: [N, k, S] logits and targets -> [N, k].

    Scaled by temperature^2 (Hinton et al.) so gradient magnitudes do not shrink with temperature.
    """
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = torch.log(marginals.clamp(min=_EPS))
    kl = (marginals * (log_q - log_p)).sum(-1)  # 0 * log 0 counts as 0
    return kl * temperature**2


def resolve_objective(objective: LossObjective | str, kind: HeadKind | str) -> str:
    """`loss.objective` for a head type: `auto` is marginal for heads that factorise, token for the others."""
    objective, factorised = LossObjective(objective), HeadKind(kind) in FACTORISED_KINDS
    if objective is LossObjective.auto:
        return LossObjective.marginal.value if factorised else LossObjective.token.value
    if objective is LossObjective.marginal and not factorised:
        raise ValueError(f"loss.objective=marginal fits only heads that factorise over positions (linear, mlp); "
                         f"heads={HeadKind(kind).value} trains with loss.objective=token (or auto).")
    return objective.value


def token_samples(loss, kind: HeadKind | str) -> tuple[int, int]:
    """(top_k, tail_samples) of the targets `loss` (a LossConfig) needs for a head type: the teacher's top tokens
    and tail draws serve only the token objective of heads that do not factorise; (0, 0) otherwise."""
    if resolve_objective(loss.objective, kind) == "token" and HeadKind(kind) not in FACTORISED_KINDS:
        return loss.top_k, loss.tail_samples
    return 0, 0


@in_fp32
def token_kl(student: StringDistribution, targets: Targets, table: torch.Tensor) -> torch.Tensor:
    """KL(q || p) over the teacher's vocabulary strings, per position: [N] (see the module docstring)."""
    if student.factorised:  # exact: the cross term decomposes over positions
        cross = -(targets.marginals * student.marginal_log_probs()).sum((-1, -2))
    else:
        if targets.top_ids is None:
            raise ValueError("The token objective for heads that do not factorise needs targets with top_k > 0.")
        cross = -(targets.top_probs * student.log_prob(table[targets.top_ids])).sum(-1)
        if targets.tail_ids.shape[1] > 0:
            cross = cross - targets.tail_mass * student.log_prob(table[targets.tail_ids]).mean(-1)
        if targets.rest_marginals is not None:
            if not hasattr(student, "rest_cross_entropy"):
                raise ValueError("Targets with the rest's marginals (loss.exact_rest) fit only shortlist heads.")
            cross = cross + student.rest_cross_entropy(targets.rest_marginals, targets.rest_mass)
    return torch.where(targets.valid, cross - targets.entropy, 0.0)


@dataclass
class LossParts:
    total: torch.Tensor
    kl: torch.Tensor  # the objective's KL: mean over heads of the marginal KL, or the token-level KL
    kl_per_head: torch.Tensor  # [k], KL(q_i || p_i) of the student's marginals (a diagnostic for the token objective)
    ce: torch.Tensor | None  # -log p(S[y]) / k of the ground-truth token (for linear heads: the mean over heads)
    ce_per_head: torch.Tensor | None  # [k], for heads that factorise
    token_kl: torch.Tensor | None = None  # the token-level KL (the objective, or a diagnostic of the marginal one)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of `values` ([N, ...]) where `mask` ([N]) holds; 0 when none does."""
    weights = mask.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return (values * weights).sum(0) / weights.sum().clamp(min=1.0)


def distillation_loss(student: StringDistribution | torch.Tensor, targets: Targets, temperature: float = 1.0,
                      ce_weight: float = 0.0, target_ids: torch.Tensor | None = None,
                      table: torch.Tensor | None = None, spellable: torch.Tensor | None = None,
                      objective: str = "marginal") -> LossParts:
    """The `marginal` objective (mean-over-heads marginal KL; factorised heads only) or the `token` one, plus
    ce_weight x the spelled cross-entropy. `student`: a head type's distribution, or [N, k, S] logits."""
    if isinstance(student, torch.Tensor):
        student = Factorised(student)
    if objective == "marginal":
        if not student.factorised:
            raise ValueError("The marginal objective needs heads that factorise over positions (linear, mlp); "
                             "use loss.objective=token.")
        kl_per_head = masked_mean(marginal_kl(student.logits, targets.marginals, temperature), targets.valid)
        kl, tokens = kl_per_head.mean(), None
        if table is not None and targets.entropy is not None:  # the token-level KL too, comparable across types
            with torch.no_grad():
                tokens = masked_mean(token_kl(student, targets, table), targets.valid)
    elif objective == "token":
        kl = tokens = masked_mean(token_kl(student, targets, table), targets.valid)
        with torch.no_grad():
            kl_per_head = masked_mean(_marginal_kl_of(student, targets), targets.valid)
    else:
        raise ValueError(f"loss.objective={objective} is unknown; use marginal or token.")
    if ce_weight == 0.0:
        return LossParts(kl, kl, kl_per_head, None, None, tokens)
    ce, ce_per_head = spelled_cross_entropy(student, target_ids, table, spellable)
    return LossParts(kl + ce_weight * ce, kl, kl_per_head, ce, ce_per_head, tokens)


@in_fp32
def _marginal_kl_of(student: StringDistribution, targets: Targets) -> torch.Tensor:
    log_q = torch.log(targets.marginals.clamp(min=_EPS))
    # clamped: autoregressive heads give their forced PADs' alternatives probability 0
    return (targets.marginals * (log_q - student.marginal_log_probs().clamp(min=math.log(_EPS)))).sum(-1)


@in_fp32
def spelled_cross_entropy(student: StringDistribution, target_ids: torch.Tensor, table: torch.Tensor,
                          spellable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-log p(S[y]) / k of the ground-truth next token y ([N] ids, -100 = none), over the positions whose token
    spells; and, for heads that factorise, its per-head parts [k] (whose mean it is)."""
    has_target = target_ids >= 0
    safe_ids = target_ids.clamp(min=0)
    mask = has_target & spellable[safe_ids]
    symbols = table[safe_ids]  # [N, k]
    k = table.shape[1]
    if student.factorised:
        per_head = masked_mean(-student.log_probs.gather(-1, symbols.unsqueeze(-1)).squeeze(-1), mask)
        return per_head.mean(), per_head
    return masked_mean(-student.log_prob(symbols.unsqueeze(1)).squeeze(1), mask) / k, None
