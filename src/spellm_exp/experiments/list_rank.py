"""How much of a shortlist's distribution a rank-r list keeps: a ceiling measured with no distillation
(results/list_rank.{md,csv}).

A shortlist head reads its L x d list every decode step; a factored list W ~ A B (A [L, r], B [r, d]) reads
L*r + r*d weights instead, the one way left to cut the batch-1 step at equal L (README, "The batch-1 step").
A list may also keep its first rows (its most frequent tokens, most of its mass) exact and factor only the rest
(heads.tail_rank, heads.exact_rows). For a distilled shortlist checkpoint and its teacher's hidden states on held-out
text, each number of exact rows and rank r of the tail is fitted three ways, each better than the one before on
what it optimises:
- `svd`: the best rank-r tail in Frobenius norm (truncated SVD of its rows);
- `data`: the best rank-r list in the logits' mean squared error over the fit positions' hidden states h
  (truncated SVD of W S^(1/2), S = E[h h^T], mapped back by S^(-1/2));
- `kl`: `data` refined by Adam on KL(full || rank r) over the fit positions (the objective distillation has).
Scored on other positions (the data's validation blocks): KL(full || rank r) of the list's softmax (the list's
L logits and the rest's gate logit, the seen tokens of heads.context_tokens left out), which bounds the change of
the SpeLLM's whole next-string distribution (data processing: strings are a function of the slot), and how
often both pick the same slot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from spellm_exp.core.heads import ShortlistHeads
from spellm_exp.core.low_rank import data_aware, truncated
from spellm_exp.core.spellm import SpeLLM

log = logging.getLogger(__name__)


@dataclass
class ListScores:
    """The list's own parameters, as the shortlist's softmax reads them."""

    weight: torch.Tensor  # [L, d]
    bias: torch.Tensor  # [L]
    gate_weight: torch.Tensor  # [1, d]
    gate_bias: torch.Tensor  # [1]

    @classmethod
    def of(cls, heads: ShortlistHeads) -> ListScores:
        if not isinstance(heads, ShortlistHeads):
            raise ValueError(f"checkpoint: its heads are '{heads.kind.value}', not a shortlist; give the run folder "
                             "of a heads=shortlist SpeLLM.")
        return cls(*(t.detach().float() for t in (heads.list_rows(), heads.bias, heads.gate.weight, heads.gate.bias)))

    def log_weights(self, hidden: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """[n, L + 1] log-softmax over the list's slots and the rest, with `weight` (default: the list's own)."""
        rows = self.weight if weight is None else weight
        return F.log_softmax(torch.cat([hidden @ rows.T + self.bias, hidden @ self.gate_weight.T + self.gate_bias],
                                       dim=-1), dim=-1)


def with_tail(scores: ListScores, exact_rows: int, factors: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """[L, d]: the list's first `exact_rows` rows as they are, the rest the product of `factors`."""
    return torch.cat([scores.weight[:exact_rows], factors[0] @ factors[1]])


def kl_refined(scores: ListScores, exact_rows: int, factors: tuple[torch.Tensor, torch.Tensor], hidden: torch.Tensor,
               target: torch.Tensor, steps: int, batch: int, lr: float, seed: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The tail's factors after `steps` Adam steps on the mean KL(target || list with that tail) of random batches
    of fit positions."""
    a, b = (factor.clone().requires_grad_(True) for factor in factors)
    optimiser = torch.optim.Adam([a, b], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(hidden.shape[0], (batch,), generator=generator)
        log_q = scores.log_weights(hidden[rows], with_tail(scores, exact_rows, (a, b)))
        loss = F.kl_div(log_q, target[rows], log_target=True, reduction="batchmean")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return a.detach(), b.detach()


def divergence(scores: ListScores, weight: torch.Tensor, hidden: torch.Tensor, reference: torch.Tensor,
               chunk: int = 1024) -> dict[str, float]:
    """Mean and 90th percentile of KL(reference || weight's softmax) over positions, and top-1 agreement."""
    kls, agree = [], []
    for start in range(0, hidden.shape[0], chunk):
        log_p = reference[start: start + chunk]
        log_q = scores.log_weights(hidden[start: start + chunk], weight)
        kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
        agree.append(log_p.argmax(-1) == log_q.argmax(-1))
    kl, same = torch.cat(kls), torch.cat(agree).float()
    return {"kl_mean": kl.mean().item(), "kl_p90": kl.quantile(0.9).item(), "top1_agreement": same.mean().item()}


@torch.no_grad()
def hidden_states(spellm: SpeLLM, blocks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[blocks x block_size, d]: the frozen backbone's final normed hidden state at every position."""
    out = [spellm.backbone(blocks[i: i + batch_size])[0] for i in range(0, len(blocks), batch_size)]
    return torch.cat(out).flatten(0, 1).float()


FITS = ("svd", "data", "kl")


def rank_rows(scores: ListScores, fit_hidden: torch.Tensor, test_hidden: torch.Tensor, exact_rows: list[int],
              ranks: list[int], refine_steps: int, refine_batch: int, refine_lr: float) -> list[dict]:
    """One row per number of exact rows, rank and fit (FITS) of the ceiling the module docstring describes."""
    length, width = scores.weight.shape
    reference = scores.log_weights(test_hidden)
    fit_target = scores.log_weights(fit_hidden)
    second_moment = fit_hidden.T @ fit_hidden / fit_hidden.shape[0]
    rows = []
    for exact in exact_rows:
        if not 0 <= exact < length:
            raise ValueError(f"exact_rows: {exact} is not in 0..{length - 1} (the list has {length} rows).")
        tail = scores.weight[exact:]
        for rank in ranks:
            if not 0 < rank <= width:
                raise ValueError(f"ranks: {rank} is not in 1..{width} (the list's width d).")
            fitted = {"svd": truncated(tail, rank), "data": data_aware(tail, second_moment, rank)}
            fitted["kl"] = kl_refined(scores, exact, fitted["data"], fit_hidden, fit_target, refine_steps,
                                      refine_batch, refine_lr)
            weights = exact * width + (length - exact) * rank + rank * width
            for fit in FITS:
                rows.append({"exact_rows": exact, "rank": rank, "fit": fit,
                             "list_bytes_ratio": weights / (length * width),
                             **divergence(scores, with_tail(scores, exact, fitted[fit]), test_hidden, reference)})
                log.info("exact rows %d, rank %d, %s: %s", exact, rank, fit, rows[-1])
    return rows
