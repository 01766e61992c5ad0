"""Output distributions built from the teacher's own next-token distribution, with no training: what
a head type could reach at best (the ceiling rows of the quality ablation).

- `teacher_marginals`: the product of the teacher's per-position marginals q_i, the best that any
  factorised head (linear, mlp) can learn under the forward KL.
- `teacher_mixture_M`: M components, the teacher's M-1 most likely spellable tokens spelled exactly
  (weights: their probabilities) plus one product of the marginals of the rest of its mass; a
  mixture of M products can represent it exactly, so it bounds what `heads=mixture` with M
  components gains.
Both use the teacher's distribution restricted to the spellable tokens and renormalised, as the
distillation targets do.
"""

from __future__ import annotations

import math
import re

import torch

from spellm_exp.core.context import TokenContext
from spellm_exp.core.heads import Factorised, Shortlist, ShortlistHeads, StringDistribution, _argmax, vocab_scores
from spellm_exp.core.losses import head_marginals

TEACHER_MARGINALS = "teacher_marginals"
TEACHER_SHORTLIST = "teacher_shortlist"
TEACHER_SHORTLIST_WEIGHTS = "teacher_shortlist_weights"
SHORTLIST_SOURCES = (TEACHER_SHORTLIST, TEACHER_SHORTLIST_WEIGHTS)
_MIXTURE = re.compile(r"teacher_mixture_(\d+)$")


def mixture_components(source: str) -> int | None:
    """M of a `teacher_mixture_M` source name; None for any other name."""
    match = _MIXTURE.match(source)
    if match is None:
        return None
    components = int(match.group(1))
    if components < 2:
        raise ValueError(f"{source}: a teacher mixture needs M >= 2 (M = 1 is {TEACHER_MARGINALS}).")
    return components


def is_ceiling(source: str) -> bool:
    return source in (TEACHER_MARGINALS, *SHORTLIST_SOURCES) or mixture_components(source) is not None


class TeacherMixture(StringDistribution):
    """sum_{j < M} q(t_j) [s = S[t_j]] + q(rest) prod_i r_i(s_i), for each of n positions."""

    def __init__(self, top_ids: torch.Tensor, top_strings: torch.Tensor, top_log_probs: torch.Tensor, rest_log_mass: torch.Tensor,
                 rest_log_marginals: torch.Tensor, log_marginals: torch.Tensor):
        self.top_ids = top_ids  # [n, M-1]
        self.top_strings = top_strings  # [n, M-1, k]
        self.top_log_probs = top_log_probs  # [n, M-1]
        self.rest_log_mass = rest_log_mass  # [n]
        self.rest = Factorised(rest_log_marginals)  # [n, k, S]
        self.log_marginals = log_marginals  # [n, k, S]: the teacher's marginals (the mixture's, exactly)

    @property
    def device_tensor(self) -> torch.Tensor:
        return self.top_strings

    def log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        same = (strings.unsqueeze(2) == self.top_strings.unsqueeze(1)).all(-1)  # [n, m, M-1]
        exact = torch.where(same, self.top_log_probs.unsqueeze(1), -math.inf)
        rest = (self.rest_log_mass.unsqueeze(1) + self.rest.log_prob(strings)).unsqueeze(-1)
        return torch.logsumexp(torch.cat([exact, rest], dim=-1), dim=-1)

    def greedy(self, forbid_pad_first: bool = True) -> torch.Tensor:
        rest = _argmax(self.rest.log_probs, forbid_pad_first).unsqueeze(1)
        candidates = torch.cat([self.top_strings, rest], dim=1)  # [n, M, k]
        best = self.log_prob(candidates).argmax(-1)
        return candidates[torch.arange(candidates.shape[0], device=best.device), best]

    def _marginal_log_probs(self) -> torch.Tensor:
        return self.log_marginals

    def vocab_log_probs(self, table: torch.Tensor, spellable: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        scores = self.rest_log_mass.unsqueeze(1) + vocab_scores(self.rest.log_probs, table, spellable)
        exact = torch.logaddexp(scores.gather(-1, self.top_ids), self.top_log_probs)
        return scores.scatter(-1, self.top_ids, exact)


def teacher_mixture(teacher_logits: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor, n_symbols: int,
                    components: int, matrix: torch.Tensor | None = None) -> TeacherMixture:
    """The `teacher_mixture_M` distribution from teacher logits [n, |V|]."""
    log_q = _spellable_log_q(teacher_logits, spellable)
    top_log_probs, top_ids = log_q.topk(min(components - 1, log_q.shape[-1]), dim=-1)
    rest_log_mass, rest = _rest_without(log_q, top_ids, table, spellable, n_symbols, matrix)
    full = head_marginals(log_q, table, spellable, n_symbols, matrix=matrix).marginals
    return TeacherMixture(top_ids, table[top_ids], top_log_probs, rest_log_mass.squeeze(-1), rest, _log(full))


def teacher_shortlist(teacher_logits: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor, n_symbols: int,
                      heads: ShortlistHeads, matrix: torch.Tensor | None = None, context: TokenContext | None = None
                      ) -> Shortlist:
    """The `teacher_shortlist` distribution of `heads`' shortlist from teacher logits [n, |V|]: log weights
    [log q(l) for the shortlist tokens l, log q(rest)] and the rest's log-marginals. A token that spells the
    same string as a shortlist token is part of the rest (the shortlist keeps one token per string). With
    heads.context_tokens and `context`, each position's seen tokens are exact too and leave the rest."""
    log_q = _spellable_log_q(teacher_logits, spellable)
    listed = heads.token_ids.to(log_q.device)
    ids = listed.expand(log_q.shape[0], -1)
    seen = None
    if heads.context_tokens:
        if context is None:
            raise ValueError("teacher_shortlist of heads with context_tokens needs the positions' TokenContext.")
        context_ids = context.per_position(context.ids)  # [n, m]
        seen = torch.where(context.visible.flatten(0, 1), log_q.gather(1, context_ids), -math.inf)
        # unseen slots take out a shortlist token again (no change), seen ones take their token out of the rest
        ids = torch.cat([ids, torch.where(context.visible.flatten(0, 1), context_ids, ids[:, :1])], dim=1)
    rest_log_mass, rest = _rest_without(log_q, ids, table, spellable, n_symbols, matrix)
    log_weights = torch.cat([log_q[:, listed], rest_log_mass], dim=-1)
    return Shortlist(heads, log_weights, Factorised(rest),
                     None if seen is None else heads.context_weights(context, seen))


def teacher_marginals(teacher_logits: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor, n_symbols: int,
                      matrix: torch.Tensor | None = None) -> Factorised:
    """The product of the teacher's per-position marginals (perfect independent heads)."""
    return Factorised(_log(head_marginals(teacher_logits, table, spellable, n_symbols, matrix=matrix).marginals))


def _spellable_log_q(teacher_logits: torch.Tensor, spellable: torch.Tensor) -> torch.Tensor:
    """The teacher's log-probabilities renormalised over the spellable tokens, as the distillation targets are."""
    return torch.log_softmax(teacher_logits.float().masked_fill(~spellable, -math.inf), dim=-1)


def _rest_without(log_q: torch.Tensor, ids: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor,
                  n_symbols: int, matrix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q(rest) [n, 1], the rest's per-position log-marginals [n, k, S]) once the tokens `ids` ([n, m]) are
    taken out of log_q [n, |V|]. Where they hold all the mass (log q(rest) = -inf), any distribution does for the
    rest, as its weight is 0: the whole one."""
    rest_log_q = log_q.scatter(-1, ids, -math.inf)
    rest_log_mass = torch.logsumexp(rest_log_q, dim=-1, keepdim=True)
    rest_logits = torch.where(torch.isfinite(rest_log_mass), rest_log_q, log_q)
    return rest_log_mass, _log(head_marginals(rest_logits, table, spellable, n_symbols, matrix=matrix).marginals)


def _log(marginals: torch.Tensor) -> torch.Tensor:
    return marginals.clamp(min=1e-30).log()

