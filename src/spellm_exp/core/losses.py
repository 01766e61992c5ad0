"""Distillation losses as pure functions of tensors (no model code).

Per position, the teacher's next-token distribution is restricted to the spellable tokens and
renormalised (the dropped mass is reported). Head i's target is the marginal

    q_i(c) = sum over spellable v with S[v, i] = c of p_T(v)

and the loss is the mean over heads of KL(q_i || p_i): among distributions that factorise over
the k positions, the product of these marginals is the closest to p_T in KL(p_T || .). The
targets are one sparse-dense product, q = M p, with M the [k*|Sigma|, |V|] 0/1 spelling matrix
restricted to non-PAD symbols; q_i(PAD) is what remains of the mass. No N x |V| x k tensor
(and, with `teacher_logits_fn`, no N x |V| tensor beyond one chunk) is ever materialised.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spellm_exp.core.charset import PAD

_EPS = 1e-12


@dataclass
class Targets:
    marginals: torch.Tensor  # [N, k, |Sigma|], fp32, rows sum to 1 where `valid`
    dropped_mass: torch.Tensor  # [N], teacher probability on tokens that do not spell
    valid: torch.Tensor  # [N] bool: some teacher mass spells


def in_fp32(loss_fn: Callable) -> Callable:
    """Run `loss_fn` with autocast off: method.md keeps the softmax, the marginals and the KL in fp32,
    also inside a bf16-mixed training step (whose autocast would otherwise cast their matmuls to bf16,
    and CSR products have no bf16 kernel). Inputs are upcast inside; the first one names the device."""

    @functools.wraps(loss_fn)
    def wrapper(first: torch.Tensor, *args, **kwargs):
        with torch.autocast(first.device.type, enabled=False):
            return loss_fn(first, *args, **kwargs)

    return wrapper


def spelling_matrix(table: torch.Tensor, n_symbols: int) -> torch.Tensor:
    """Sparse CSR [k*|Sigma|, |V|]: 1 at (i*|Sigma| + S[v, i], v) for every non-PAD symbol of the table."""
    vocab_size, k = table.shape
    keep = table != PAD
    rows = (torch.arange(k, device=table.device) * n_symbols + table)[keep]
    cols = torch.arange(vocab_size, device=table.device).unsqueeze(1).expand(vocab_size, k)[keep]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel(), device=table.device),
                                  (k * n_symbols, vocab_size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return coo.coalesce().to_sparse_csr()


@in_fp32
def head_marginals(teacher_logits: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor,
                   n_symbols: int, temperature: float = 1.0, matrix: torch.Tensor | None = None) -> Targets:
    """[N, |V|] teacher logits -> per-head marginals of the renormalised spellable distribution.

    `matrix` is `spelling_matrix(table, n_symbols)`, passed in to build it once per table.
    """
    if matrix is None:
        matrix = spelling_matrix(table, n_symbols)
    probs = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    if matrix.dtype != probs.dtype:  # FSDP's bf16 mixed precision casts floating buffers; 0/1 stay exact
        matrix = matrix.to(probs.dtype)
    spell_mass = probs @ spellable.to(probs.dtype)
    k = table.shape[1]
    # unspellable ids have empty columns in the matrix: renormalising after the product is enough
    marginals = torch.sparse.mm(matrix, probs.T.contiguous()).T.reshape(-1, k, n_symbols)
    marginals = marginals / spell_mass.clamp(min=_EPS).reshape(-1, 1, 1)
    valid = spell_mass > _EPS
    # the rest of each head's mass is on PAD (tokens shorter than i + 1); 0 where nothing spells
    marginals[:, :, PAD] = (valid.float().unsqueeze(-1) - marginals.sum(-1)).clamp(min=0.0)
    return Targets(marginals, 1.0 - spell_mass, valid)


def chunked_head_marginals(hidden: torch.Tensor, teacher_logits_fn: Callable[[torch.Tensor], torch.Tensor],
                           table: torch.Tensor, spellable: torch.Tensor, n_symbols: int,
                           temperature: float = 1.0, chunk_size: int = 256,
                           matrix: torch.Tensor | None = None) -> Targets:
    """The same targets from hidden states [N, d], computing teacher logits `chunk_size` rows at a time."""
    if matrix is None:
        matrix = spelling_matrix(table, n_symbols)
    parts = [head_marginals(teacher_logits_fn(hidden[start:start + chunk_size]), table, spellable,
                            n_symbols, temperature, matrix)
             for start in range(0, hidden.shape[0], chunk_size)]
    return Targets(*(torch.cat([getattr(p, f) for p in parts]) for f in ("marginals", "dropped_mass", "valid")))


@in_fp32
def marginal_kl(student_logits: torch.Tensor, marginals: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(q_i || p_i) per position and head: [N, k, S] logits and targets -> [N, k].

    Scaled by temperature^2 (Hinton et al.) so gradient magnitudes do not shrink with temperature.
    """
    log_p = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_q = torch.log(marginals.clamp(min=_EPS))
    kl = (marginals * (log_q - log_p)).sum(-1)  # 0 * log 0 counts as 0
    return kl * temperature**2


@in_fp32
def spelled_cross_entropy(student_logits: torch.Tensor, target_ids: torch.Tensor, table: torch.Tensor,
                          spellable: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p_i(S[y, i]) per position and head for the ground-truth next token y ([N] ids, -100 = none).

    Returns the [N, k] losses and the [N] mask of positions whose token spells.
    """
    has_target = target_ids >= 0
    safe_ids = target_ids.clamp(min=0)
    mask = has_target & spellable[safe_ids]
    symbols = table[safe_ids]  # [N, k]
    log_p = F.log_softmax(student_logits.float(), dim=-1)
    return -log_p.gather(-1, symbols.unsqueeze(-1)).squeeze(-1), mask


@dataclass
class LossParts:
    total: torch.Tensor
    kl: torch.Tensor  # mean over valid positions and heads
    kl_per_head: torch.Tensor  # [k]
    ce: torch.Tensor | None
    ce_per_head: torch.Tensor | None


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the rows of `values` ([N, ...]) where `mask` ([N]) holds; 0 when none does."""
    weights = mask.to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return (values * weights).sum(0) / weights.sum().clamp(min=1.0)


def distillation_loss(student_logits: torch.Tensor, targets: Targets, temperature: float = 1.0,
                      ce_weight: float = 0.0, target_ids: torch.Tensor | None = None,
                      table: torch.Tensor | None = None, spellable: torch.Tensor | None = None) -> LossParts:
    """Mean-over-heads marginal KL (+ ce_weight x spelled cross-entropy), over [N, k, S] student logits."""
    kl_per_head = masked_mean(marginal_kl(student_logits, targets.marginals, temperature), targets.valid)
    kl = kl_per_head.mean()
    if ce_weight == 0.0:
        return LossParts(kl, kl, kl_per_head, None, None)
    ce_values, ce_mask = spelled_cross_entropy(student_logits, target_ids, table, spellable)
    ce_per_head = masked_mean(ce_values, ce_mask)
    ce = ce_per_head.mean()
    return LossParts(kl + ce_weight * ce, kl, kl_per_head, ce, ce_per_head)
