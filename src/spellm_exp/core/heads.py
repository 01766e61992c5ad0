"""The SpeLLM's output layer: for each position, a distribution over the strings of Sigma^k.

Every head type maps the final hidden state [n, d] to a `StringDistribution`, which scores given
strings exactly (`log_prob`), proposes the greedy string, and gives per-position marginals and the
scores of the vocabulary's spellings. Scoring, decoding and the token-level loss only use that
interface, so they treat every head type alike. The types (`heads.kind`, conf/heads/):

- `linear` (the paper's): k independent linear maps d -> |Sigma|, held as one [k, |Sigma|, d] tensor (k
  separate parameter slices, unlike Medusa's list-multiplied heads, which silently shared one module)
  and evaluated as a single fused matmul;
- `mlp`: a residual MLP trunk d -> r -> d shared by the k linear heads;
- `mixture`: p(s) = sum_m pi_m prod_i p_{m,i}(s_i), M products mixed by a small gate;
- `autoregressive`: the linear heads plus a character decoder: position i adds U_i gelu(C h + Q_i + z_i),
  z_i = sum_{j<i} E_j[s_j] the position-tagged embeddings of the earlier characters. After a PAD or EOS
  the string is over, so every later symbol is PAD with probability 1: the distribution is over valid
  strings only.

All of them start as the `linear` heads' product (the extra parts are zero-initialised), except the
mixture's components, which start as noisy copies of it.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from spellm_exp.config import HeadKind, HeadsConfig
from spellm_exp.core.charset import EOS, PAD, SpellingTable
from spellm_exp.core.context import TokenContext
from spellm_exp.core.low_rank import data_aware, truncated
from spellm_exp.core.vocab_lookup import hash_powers, string_keys


# --- distributions over Sigma^k ------------------------------------------------------------------
def vocab_scores(log_probs: torch.Tensor, table: torch.Tensor, spellable: torch.Tensor) -> torch.Tensor:
    """sum_i log p_i(S[v, i]) for every v: [n, k, S] -> [n, |V|], unspellable ids at -inf."""
    scores = torch.zeros(log_probs.shape[0], table.shape[0], device=log_probs.device)
    for i in range(table.shape[1]):
        scores += log_probs[:, i, table[:, i]]
    return scores.masked_fill(~spellable, -math.inf)


def spelling_matrix(table: torch.Tensor, n_symbols: int, keep_pad: bool = False) -> torch.Tensor:
    """Sparse CSR [k*|Sigma|, rows]: 1 at (i*|Sigma| + S[v, i], v) for every symbol of the table [rows, k]
    (PAD symbols only with `keep_pad`)."""
    vocab_size, k = table.shape
    keep = torch.ones_like(table, dtype=torch.bool) if keep_pad else table != PAD
    rows = (torch.arange(k, device=table.device) * n_symbols + table)[keep]
    cols = torch.arange(vocab_size, device=table.device).unsqueeze(1).expand(vocab_size, k)[keep]
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel(), device=table.device),
                                  (k * n_symbols, vocab_size), check_invariants=False)  # built valid here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return coo.coalesce().to_sparse_csr()


def _gather_strings(log_probs: torch.Tensor, strings: torch.Tensor) -> torch.Tensor:
    """log p_i(s_i) of each string: [n, ..., k, S] per-position log-probs, [n, ..., k] strings -> [n, ..., k]."""
    shape = torch.broadcast_shapes(log_probs.shape[:-1], strings.shape)  # views, no copies
    index = strings.expand(shape).unsqueeze(-1)
    return log_probs.expand(*shape, log_probs.shape[-1]).gather(-1, index).squeeze(-1)


def _argmax(log_probs: torch.Tensor, forbid_pad_first: bool) -> torch.Tensor:
    if forbid_pad_first:  # decoding: an empty string is no output
        log_probs = log_probs.clone()
        log_probs[..., 0, PAD] = -math.inf
    return log_probs.argmax(-1)


class StringDistribution:
    """p(s) for s in Sigma^k at each of n positions."""

    factorised = False  # a product over positions of its marginals

    def log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        """log p(s): [n, m, k] symbol ids (m candidate strings per position) -> [n, m]."""
        raise NotImplementedError

    def greedy(self, forbid_pad_first: bool = True) -> torch.Tensor:
        """The string the head emits: [n, k]."""
        raise NotImplementedError

    def marginal_log_probs(self) -> torch.Tensor:
        """Per-position log-probabilities [n, k, S]: the exact marginals (the autoregressive type: the
        conditionals along its greedy string), for metrics and the `product` of factorised heads.

        Outside autograd the value is kept: a training step's loss diagnostics and metrics both read it."""
        if torch.is_grad_enabled():
            return self._marginal_log_probs()
        if getattr(self, "_kept_marginals", None) is None:
            self._kept_marginals = self._marginal_log_probs()
        return self._kept_marginals

    def _marginal_log_probs(self) -> torch.Tensor:
        raise NotImplementedError

    def vocab_log_probs(self, table: torch.Tensor, spellable: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """log p(S[v]) for every vocabulary id: [n, |V|], unspellable ids at -inf (string by string)."""
        parts = [self.log_prob(table[start:start + chunk].unsqueeze(0).expand(self.size, -1, -1))
                 for start in range(0, table.shape[0], chunk)]
        return torch.cat(parts, dim=1).masked_fill(~spellable, -math.inf)

    @property
    def size(self) -> int:
        return self.device_tensor.shape[0]

    @property
    def device(self) -> torch.device:
        return self.device_tensor.device

    @property
    def device_tensor(self) -> torch.Tensor:
        """A tensor with one row per position (its device is the distribution's)."""
        raise NotImplementedError


class Factorised(StringDistribution):
    """prod_i p_i(s_i), from per-position logits [n, k, S] (normalised when first needed: greedy decoding
    needs only their argmax)."""

    factorised = True

    def __init__(self, logits: torch.Tensor):
        self.logits = logits
        self._log_probs: torch.Tensor | None = None

    @property
    def log_probs(self) -> torch.Tensor:
        if self._log_probs is not None:
            return self._log_probs
        log_probs = F.log_softmax(self.logits.float(), dim=-1)
        if torch.is_grad_enabled() or not self.logits.requires_grad:  # never cache a copy cut from the graph
            self._log_probs = log_probs
        return log_probs

    @property
    def device_tensor(self) -> torch.Tensor:
        return self.logits

    def log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        return _gather_strings(self.log_probs.unsqueeze(1), strings).sum(-1)

    def greedy(self, forbid_pad_first: bool = True) -> torch.Tensor:
        return _argmax(self.logits, forbid_pad_first)

    def marginal_log_probs(self) -> torch.Tensor:
        return self.log_probs

    def vocab_log_probs(self, table: torch.Tensor, spellable: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        return vocab_scores(self.log_probs, table, spellable)


class Mixture(StringDistribution):
    """sum_m pi_m prod_i p_{m,i}(s_i), from log weights [n, M] and per-component log-probs [n, M, k, S]."""

    def __init__(self, log_weights: torch.Tensor, log_probs: torch.Tensor):
        self.log_weights, self.log_probs = log_weights, log_probs

    @property
    def device_tensor(self) -> torch.Tensor:
        return self.log_probs

    def log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        per_component = _gather_strings(self.log_probs.unsqueeze(2), strings.unsqueeze(1)).sum(-1)  # [n, M, m]
        return torch.logsumexp(self.log_weights.unsqueeze(-1) + per_component, dim=1)

    def greedy(self, forbid_pad_first: bool = True) -> torch.Tensor:
        """The best of the M components' argmax strings by p(s) under the whole mixture."""
        candidates = _argmax(self.log_probs, forbid_pad_first)  # [n, M, k]
        best = self.log_prob(candidates).argmax(-1)
        return candidates[torch.arange(candidates.shape[0], device=best.device), best]

    def _marginal_log_probs(self) -> torch.Tensor:
        return torch.logsumexp(self.log_weights[:, :, None, None] + self.log_probs, dim=1)

    def vocab_log_probs(self, table: torch.Tensor, spellable: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        per_component = torch.stack([vocab_scores(self.log_probs[:, m], table, spellable)
                                     for m in range(self.log_probs.shape[1])], dim=1)
        return torch.logsumexp(self.log_weights.unsqueeze(-1) + per_component, dim=1)


class Autoregressive(StringDistribution):
    """p(s) = prod_i p(s_i | h, s_<i) of `AutoregressiveHeads`, for hidden states [n, d]."""

    def __init__(self, heads: AutoregressiveHeads | ShortlistHeads, hidden: torch.Tensor):
        self.heads = heads  # a module with the linear heads and the decoder's parameters (add_character_decoder)
        self.base = heads.linear.logits(hidden)  # [n, k, S]
        self.context = heads.context(hidden)  # [n, r]

    @property
    def device_tensor(self) -> torch.Tensor:
        return self.base

    def log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        heads, k = self.heads, self.base.shape[1]
        embedded = heads.embedding[torch.arange(k, device=strings.device), strings]  # [n, m, k, r]
        earlier = embedded.cumsum(dim=2) - embedded  # z_i: the characters before i
        act = F.gelu(self.context[:, None, None, :] + heads.position + earlier)
        logits = self.base.unsqueeze(1) + torch.einsum("nmkr,ksr->nmks", act, heads.out_weight) + heads.out_bias
        log_p = _gather_strings(F.log_softmax(logits.float(), dim=-1), strings)  # [n, m, k]
        ended = _ended(strings)
        forced = torch.where(strings == PAD, 0.0, -math.inf).to(log_p.dtype)
        return torch.where(ended, forced, log_p).sum(-1)

    def _steps(self, forbid_pad_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The greedy string [n, k] and the log-probs of each of its steps [n, k, S]."""
        heads, (n, k, _) = self.heads, self.base.shape
        earlier = torch.zeros_like(self.context)
        symbols, steps = [], []
        ended = torch.zeros(n, dtype=torch.bool, device=self.base.device)
        for i in range(k):
            act = F.gelu(self.context + heads.position[i] + earlier)
            log_p = F.log_softmax((self.base[:, i] + act @ heads.out_weight[i].T + heads.out_bias[i]).float(), -1)
            if i == 0 and forbid_pad_first:
                log_p = log_p.clone()
                log_p[:, PAD] = -math.inf
            pad_only = torch.full_like(log_p, -math.inf)
            pad_only[:, PAD] = 0.0
            log_p = torch.where(ended.unsqueeze(-1), pad_only, log_p)
            symbol = log_p.argmax(-1)
            symbols.append(symbol)
            steps.append(log_p)
            earlier = earlier + heads.embedding[i, symbol]
            ended = ended | (symbol == PAD) | (symbol == EOS)
        return torch.stack(symbols, dim=1), torch.stack(steps, dim=1)

    def greedy(self, forbid_pad_first: bool = True) -> torch.Tensor:
        return self._steps(forbid_pad_first)[0]

    def _marginal_log_probs(self) -> torch.Tensor:
        return self._steps(False)[1]


class ContextWeights:
    """The exact part of a shortlist for the tokens each position has seen (`heads.context_tokens`): their context
    (strings [G, m, k]) and log weights [n, m] (-inf where a position has not seen the token); the strings' keys
    [G, m] (hashed with `powers`) when first needed."""

    def __init__(self, context: TokenContext, powers: torch.Tensor, log_weights: torch.Tensor):
        self.context, self.strings, self.log_weights = context, context.strings, log_weights
        self._powers, self._keys = powers, None

    @property
    def keys(self) -> torch.Tensor:
        if self._keys is None:
            self._keys = string_keys(self.strings, self._powers)
        return self._keys

    def seen_log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        """[n, C]: log of the seen tokens' weight on each of C strings [n, C, k] per position (-inf where none
        spells it), by comparing the strings themselves: for a decode step's few candidates, not a batch's."""
        same = (self.context.per_position(self.strings).unsqueeze(1) == strings.unsqueeze(2)).all(-1)  # [n, C, m]
        return torch.where(same, self.log_weights.unsqueeze(1), -math.inf).logsumexp(-1)

    def log_terms(self, strings: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """[n, m', m]: log w_j where seen token j spells string m' of strings [n, m', k] (keys [n, m']), else -inf;
        summed by the caller in one logsumexp with finite terms (a logsumexp of only -inf has NaN gradients)."""
        same = keys.unsqueeze(-1) == self.context.per_position(self.keys).unsqueeze(1)  # [n, m', m]
        first = self.context.per_position(self.strings).gather(
            1, same.float().argmax(-1).unsqueeze(-1).expand(-1, -1, strings.shape[-1]))
        same = same & (first == strings).all(-1, keepdim=True)  # a key collision is no match
        return torch.where(same, self.log_weights.unsqueeze(1), -math.inf)

    def best(self) -> torch.Tensor:
        """[n, k] the string of each position's most likely seen token."""
        index = self.log_weights.argmax(-1)  # [n]
        strings = self.context.per_position(self.strings)
        return strings[torch.arange(strings.shape[0], device=index.device), index]

    def marginals(self, n_symbols: int) -> torch.Tensor:
        """[n, k, S]: sum_j w_j [S[t_j]_i = s], the seen tokens' share of the per-position marginals."""
        strings = self.context.per_position(self.strings)  # [n, m, k]
        weights = self.log_weights.float().exp().unsqueeze(1).expand(-1, strings.shape[-1], -1)  # [n, k, m]
        out = weights.new_zeros(strings.shape[0], strings.shape[-1], n_symbols)
        return out.scatter_add_(-1, strings.transpose(1, 2), weights)


class Shortlist(StringDistribution):
    """sum over shortlist tokens l with S_l = s of w_l, plus w_rest p_rest(s): log weights [n, L + 1] (the rest
    last) and the rest's distribution over Sigma^k (a product of per-position distributions, or the character
    decoder's), of `ShortlistHeads`; with `context`, the seen tokens' exact weights too (all summing to 1)."""

    def __init__(self, heads: ShortlistHeads, log_weights: torch.Tensor, rest: StringDistribution,
                 context: ContextWeights | None = None):
        self.heads, self.log_weights, self.rest, self.context = heads, log_weights, rest, context
        self.over_vocabulary = RestOverVocabulary(heads, rest) if heads.rest_outside < 1 else None

    @property
    def device_tensor(self) -> torch.Tensor:
        return self.log_weights

    def log_prob(self, strings: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(strings.shape[:-1], (self.size, 1))
        strings = strings.expand(*shape, strings.shape[-1])
        keys = string_keys(strings, self.heads.powers)
        exact = self._exact(self.heads.slot_of(strings, keys))  # [n, m]
        rest = self.rest.log_prob(strings)
        if self.over_vocabulary is not None:
            rest = self.over_vocabulary.rescale(strings, rest)
        if self.context is None:
            return torch.logaddexp(exact, self.log_weights[:, -1:] + rest)
        seen = self.context.log_terms(strings, keys)
        return torch.logsumexp(torch.cat([exact.unsqueeze(-1), seen, (self.log_weights[:, -1:] + rest).unsqueeze(-1)],
                                         dim=-1), dim=-1)

    def rest_cross_entropy(self, rest_marginals: torch.Tensor, rest_mass: torch.Tensor) -> torch.Tensor:
        """-sum over the rest's tokens t of q(t) log p(S[t]), exactly, per position [n], from the teacher's marginals
        over those tokens alone ([n, k, S], summing to `rest_mass` q(R) [n] per head): for a product rest,
        log p(S[t]) = log w_rest (+ the renormalisation over R) + sum_i log p_i(S[t]_i), so the sum splits by head."""
        if not self.rest.factorised:
            raise ValueError(f"The exact rest loss (loss.exact_rest) needs a rest that is a product (heads.rest=linear "
                             f"or mlp), not heads.rest={self.heads.rest.value}.")
        if self.context is not None:
            raise ValueError("The exact rest loss (loss.exact_rest) counts seen tokens as the rest's; it does not fit "
                             "heads.context_tokens=true.")
        log_rest = self.log_weights[:, -1].float()
        if self.over_vocabulary is not None:
            log_rest = log_rest + self.over_vocabulary.log_inside.squeeze(-1)
        return -(rest_mass * log_rest + (rest_marginals * self.rest.marginal_log_probs()).sum((-1, -2)))

    def greedy(self, forbid_pad_first: bool = True) -> torch.Tensor:
        """The best, by p(s), of the most likely shortlist token's string, the rest's argmax string, (rest
        renormalised over its vocabulary) the rest's most likely vocabulary string and (context tokens) the most
        likely seen token's string."""
        best = self.heads.strings[self.log_weights[:, :-1].argmax(-1)]  # [n, k]
        candidates = [best, self.rest.greedy(forbid_pad_first)]
        if self.over_vocabulary is not None:
            candidates.append(self.over_vocabulary.best)
        if self.context is not None:
            candidates.append(self.context.best())
        candidates = torch.stack(candidates, dim=1)  # [n, 2 to 4, k]
        scores = self.log_prob(candidates) if self.over_vocabulary is not None else self._candidate_scores(candidates)
        pick = scores.argmax(-1)
        return candidates[torch.arange(candidates.shape[0], device=pick.device), pick]

    def _candidate_scores(self, candidates: torch.Tensor) -> torch.Tensor:
        """log p of a few candidate strings [n, C, k] per position, as `log_prob` (rest not renormalised) but in
        fewer steps: a decode step runs this every time, on a CPU each step's small operations start cold after the
        backbone's, and the seen tokens' part compares the C strings directly instead of hashing them."""
        terms = [self._exact(self.heads.slot_of(candidates)), self.log_weights[:, -1:] + self.rest.log_prob(candidates)]
        if self.context is not None:
            terms.append(self.context.seen_log_prob(candidates))
        return torch.stack(terms, dim=-1).logsumexp(-1)

    def _exact(self, slots: torch.Tensor) -> torch.Tensor:
        """[n, m] shortlist slots (-1: none) -> the list's log weight of each, -inf where none."""
        return torch.where(slots >= 0, self.log_weights.gather(1, slots.clamp(min=0)), -math.inf)

    def _marginal_log_probs(self) -> torch.Tensor:
        weights = self.log_weights.float().exp()
        rest = self.rest.marginal_log_probs().exp()  # the decoder's: its greedy path's steps
        if self.over_vocabulary is not None:
            rest = self.over_vocabulary.marginals(rest)
        n, (k, symbols) = weights.shape[0], rest.shape[1:]
        shortlist = torch.sparse.mm(self.heads.symbol_matrix(), weights[:, :-1].T.contiguous()).T
        mixed = shortlist.reshape(n, k, symbols) + weights[:, -1:, None] * rest
        if self.context is not None:
            mixed = mixed + self.context.marginals(symbols)
        return mixed.clamp(min=1e-30).log()


class RestOverVocabulary:
    """A shortlist's rest renormalised over its vocabulary strings R (the spellable tokens' strings that no
    shortlist token spells), eps = `heads.rest_outside` left to every other string:
    p'(s) = p(s) (1 - eps (1 - Z)) / Z on R and eps p(s) elsewhere, Z = p(R) per position; sums to 1, and eps = 1
    is p itself. Needs a product rest (its scores over R are k gathers; check_rest_outside ensures one)."""

    def __init__(self, heads: ShortlistHeads, rest: StringDistribution):
        self.heads, self.strings = heads, heads.rest_strings()
        scores = vocab_scores(rest.marginal_log_probs(), self.strings,
                              torch.ones(self.strings.shape[0], dtype=torch.bool, device=self.strings.device))
        log_z = torch.logsumexp(scores, dim=-1, keepdim=True)  # [n, 1]
        self.log_outside = math.log(heads.rest_outside)
        self.log_inside = torch.log1p(-heads.rest_outside * (1 - log_z.exp())) - log_z
        self.share = (scores - log_z).exp()  # [n, |R|]: the rest's distribution over R alone
        self.best = self.strings[scores.argmax(-1)]  # [n, k]

    def rescale(self, strings: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        """log p'(s) from log p(s) of strings [n, m, k]."""
        inside = self.heads.is_rest_string(strings)
        return torch.where(inside, log_p + self.log_inside, log_p + self.log_outside)

    def marginals(self, plain: torch.Tensor) -> torch.Tensor:
        """p'-marginals [n, k, S] from the plain ones: (1 - eps) (marginals of the share over R) + eps plain."""
        n, k, symbols = plain.shape
        matrix = self.heads.rest_symbol_matrix()  # [k*S, |R|]
        inside = torch.sparse.mm(matrix, self.share.T.contiguous()).T.reshape(n, k, symbols)
        eps = self.heads.rest_outside
        return (1 - eps) * inside + eps * plain


def _ended(strings: torch.Tensor) -> torch.Tensor:
    """[..., k]: whether a PAD or EOS came before position i (the string is over there)."""
    stops = ((strings == PAD) | (strings == EOS)).long()
    return (stops.cumsum(-1) - stops) > 0


# --- the head modules ----------------------------------------------------------------------------
class OutputHeads(nn.Module):
    """hidden [..., d] -> StringDistribution; `kind` and `settings()` go into the checkpoint."""

    kind: HeadKind

    def __init__(self, k: int, n_symbols: int, hidden_size: int):
        super().__init__()
        self.k, self.n_symbols, self.hidden_size = k, n_symbols, hidden_size

    def part(self, name: str) -> nn.Module | nn.Parameter:
        """A part of the heads by its attribute name (a parameter or a submodule); a ValueError that lists them."""
        parts = dict(self.named_children()) | dict(self.named_parameters(recurse=False))
        if name not in parts:
            raise ValueError(f"{heads_label(self.settings())} heads have no part {name!r}; theirs: "
                             f"{', '.join(sorted(parts))}.")
        return parts[name]

    def settings(self) -> HeadsConfig:
        return HeadsConfig(kind=self.kind)

    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        raise NotImplementedError

    def attach_spelling(self, spelling: SpellingTable) -> None:
        """What a head type needs of the spelling table besides its parameters (set when a SpeLLM is built or
        loaded); nothing for most."""

    def fit_vocabulary(self, spelling: SpellingTable, counts: torch.Tensor | None = None) -> None:
        """Choose what the type keeps of the teacher's vocabulary (the shortlist type: its tokens), from the
        spelling table and the distillation text's token counts; nothing for the other types."""

    def decode_flops(self) -> int:
        """Multiply-adds x 2 per position of one greedy decode step, next to the teacher's 2 |V| d."""
        raise NotImplementedError

    def pack_rows(self) -> bool:
        """Lay the output rows out for fewer matmuls per decode step, where a type can (the shortlist's); whether
        it did."""
        return False

    def prepare_decoding(self) -> None:
        """Before a decode loop's first step: pack the rows and build what the steps look up, so that a compiled
        step finds it ready (`decoding.SpeLLMHead.prepare`)."""
        self.pack_rows()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class LinearHeads(OutputHeads):
    kind = HeadKind.linear

    def __init__(self, k: int, n_symbols: int, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__(k, n_symbols, hidden_size)
        self.weight = nn.Parameter(torch.empty(k, n_symbols, hidden_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(k, n_symbols, dtype=dtype))
        nn.init.normal_(self.weight, std=hidden_size**-0.5)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> logits [..., k, |Sigma|]."""
        fused = F.linear(hidden, self.weight.flatten(0, 1), self.bias.flatten())
        return fused.unflatten(-1, (self.k, self.n_symbols))

    def forward(self, hidden: torch.Tensor) -> Factorised:
        return Factorised(self.logits(hidden))

    @torch.no_grad()
    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        """Row (i, c) := mean of the unembedding rows of the tokens whose i-th symbol is c.

        Symbols that no token has at position i get the mean over all spellable tokens.
        """
        self.weight.copy_(unembedding_means(unembedding, spelling, self.k, self.n_symbols).to(self.weight.dtype))
        self.bias.zero_()

    def decode_flops(self) -> int:
        return 2 * self.k * self.n_symbols * self.hidden_size


def unembedding_means(unembedding: torch.Tensor, spelling: SpellingTable, k: int, n_symbols: int) -> torch.Tensor:
    """[k, |Sigma|, d]: per (position i, symbol c), the mean unembedding row of the tokens with S[v, i] = c."""
    device = unembedding.device  # the teacher may already sit on a GPU; the table lives on the CPU
    rows = unembedding[spelling.spellable.to(device)].to(torch.float32)
    table = spelling.table[spelling.spellable].to(device)
    fallback = rows.mean(dim=0)
    means = torch.empty(k, n_symbols, rows.shape[1], device=device)
    for i in range(k):
        sums = torch.zeros(n_symbols, rows.shape[1], device=device).index_add_(0, table[:, i], rows)
        counts = torch.bincount(table[:, i], minlength=n_symbols).unsqueeze(1)
        means[i] = torch.where(counts > 0, sums / counts.clamp(min=1), fallback)
    return means


class MLPHeads(OutputHeads):
    """h + W_down gelu(W_up h), then the k linear heads; W_down starts at zero."""

    kind = HeadKind.mlp

    def __init__(self, k: int, n_symbols: int, hidden_size: int, trunk_multiple: int = 4,
                 dtype: torch.dtype = torch.float32):
        super().__init__(k, n_symbols, hidden_size)
        self.trunk_multiple = trunk_multiple
        add_trunk(self, trunk_multiple, dtype)
        self.linear = LinearHeads(k, n_symbols, hidden_size, dtype)

    def settings(self) -> HeadsConfig:
        return HeadsConfig(kind=self.kind, trunk_multiple=self.trunk_multiple)

    def forward(self, hidden: torch.Tensor) -> Factorised:
        return self.linear(trunk(self, hidden))

    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        self.linear.init_from_unembedding(unembedding, spelling)

    def decode_flops(self) -> int:
        return trunk_flops(self) + self.linear.decode_flops()


def add_trunk(module: OutputHeads, trunk_multiple: int, dtype: torch.dtype) -> None:
    """The mlp type's residual trunk h + W_down gelu(W_up h) on `module` (up, down; W_down at zero, so it starts as
    the identity)."""
    width = trunk_multiple * module.hidden_size
    module.up = nn.Linear(module.hidden_size, width, dtype=dtype)
    module.down = nn.Linear(width, module.hidden_size, dtype=dtype)
    nn.init.zeros_(module.down.weight)
    nn.init.zeros_(module.down.bias)


def trunk(module: OutputHeads, hidden: torch.Tensor) -> torch.Tensor:
    return hidden + module.down(F.gelu(module.up(hidden)))


def trunk_flops(module: OutputHeads) -> int:
    return 4 * module.hidden_size * module.up.out_features


class MixtureHeads(OutputHeads):
    """M sets of k linear heads (one fused [M*k*|Sigma|, d] matmul) and a gate d -> M."""

    kind = HeadKind.mixture

    def __init__(self, k: int, n_symbols: int, hidden_size: int, components: int = 4,
                 dtype: torch.dtype = torch.float32):
        super().__init__(k, n_symbols, hidden_size)
        if components < 1:
            raise ValueError(f"heads.components={components}: a mixture needs at least one component.")
        self.components = components
        self.weight = nn.Parameter(torch.empty(components, k, n_symbols, hidden_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(components, k, n_symbols, dtype=dtype))
        nn.init.normal_(self.weight, std=hidden_size**-0.5)
        self.gate = nn.Linear(hidden_size, components, dtype=dtype)

    def settings(self) -> HeadsConfig:
        return HeadsConfig(kind=self.kind, components=self.components)

    def forward(self, hidden: torch.Tensor) -> Mixture:
        fused = F.linear(hidden, self.weight.flatten(0, 2), self.bias.flatten())
        log_probs = F.log_softmax(fused.unflatten(-1, (self.components, self.k, self.n_symbols)).float(), dim=-1)
        return Mixture(F.log_softmax(self.gate(hidden).float(), dim=-1), log_probs)

    @torch.no_grad()
    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        """Every component := the linear heads' init plus noise (10% of its spread), so they can part."""
        means = unembedding_means(unembedding, spelling, self.k, self.n_symbols)
        noise = torch.randn(self.components, *means.shape, device=means.device) * 0.1 * means.std()
        self.weight.copy_((means + noise).to(self.weight.dtype))
        self.bias.zero_()

    def decode_flops(self) -> int:
        return 2 * self.components * (self.k * self.n_symbols + 1) * self.hidden_size


class AutoregressiveHeads(OutputHeads):
    """The linear heads, plus per position i: U_i gelu(C h + Q_i + sum_{j<i} E_j[s_j]) (U starts at zero)."""

    kind = HeadKind.autoregressive

    def __init__(self, k: int, n_symbols: int, hidden_size: int, decoder_size: int = 128,
                 dtype: torch.dtype = torch.float32):
        super().__init__(k, n_symbols, hidden_size)
        self.decoder_size = decoder_size
        self.linear = LinearHeads(k, n_symbols, hidden_size, dtype)
        add_character_decoder(self, decoder_size, dtype)

    def settings(self) -> HeadsConfig:
        return HeadsConfig(kind=self.kind, decoder_size=self.decoder_size)

    def forward(self, hidden: torch.Tensor) -> Autoregressive:
        return Autoregressive(self, hidden)

    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        self.linear.init_from_unembedding(unembedding, spelling)

    def decode_flops(self) -> int:
        return self.linear.decode_flops() + character_decoder_flops(self)


def add_character_decoder(module: OutputHeads, decoder_size: int, dtype: torch.dtype) -> None:
    """The autoregressive type's character decoder on `module` (beside its `linear` heads): C (context), Q_i
    (position), E_j (embedding), U_i and its bias (out_weight, out_bias; zero, so it starts as the linear heads)."""
    k, n_symbols = module.k, module.n_symbols
    module.context = nn.Linear(module.hidden_size, decoder_size, dtype=dtype)
    module.position = nn.Parameter(torch.zeros(k, decoder_size, dtype=dtype))
    module.embedding = nn.Parameter(torch.randn(k, n_symbols, decoder_size, dtype=dtype) * decoder_size**-0.5)
    module.out_weight = nn.Parameter(torch.zeros(k, n_symbols, decoder_size, dtype=dtype))
    module.out_bias = nn.Parameter(torch.zeros(k, n_symbols, dtype=dtype))


def character_decoder_flops(module: OutputHeads) -> int:
    r = module.context.out_features
    return 2 * module.hidden_size * r + module.k * (2 * module.n_symbols * r + 2 * r)


class ShortlistHeads(OutputHeads):
    """A softmax over the L shortlist tokens and one "rest" logit (gate), plus the k linear heads for the rest.

    The shortlist is chosen by `fit_vocabulary` (the most frequent spellable tokens, one per string) and kept in
    the checkpoint as buffers (token ids and their strings); its rows start as the teacher's own unembedding rows.
    """

    kind = HeadKind.shortlist

    def __init__(self, k: int, n_symbols: int, hidden_size: int, shortlist: int = 4096,
                 rest: HeadKind | str = HeadKind.linear, decoder_size: int = 128, trunk_multiple: int = 4,
                 rest_outside: float = 1.0, context_tokens: bool = False, tail_rank: int = 0, exact_rows: int = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__(k, n_symbols, hidden_size)
        if shortlist < 1:
            raise ValueError(f"heads.shortlist={shortlist}: a shortlist needs at least one token.")
        self.size, self.rest = shortlist, check_rest(rest)
        self.rest_outside = check_rest_outside(rest_outside, self.rest)
        self.context_tokens = bool(context_tokens)  # the seen tokens' exact logits too (core.context)
        self.tail_rank, self.exact_rows = check_tail(tail_rank, exact_rows, shortlist, hidden_size)
        # the list's rows: `weight` holds the exact ones (all L unless heads.tail_rank), tail_out @ tail_in the rest
        self.weight = nn.Parameter(torch.empty(self.exact_rows if self.tail_rank else shortlist, hidden_size,
                                               dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(shortlist, dtype=dtype))
        nn.init.normal_(self.weight, std=hidden_size**-0.5)
        if self.tail_rank:
            self.tail_in = nn.Parameter(torch.empty(self.tail_rank, hidden_size, dtype=dtype))
            self.tail_out = nn.Parameter(torch.empty(shortlist - self.exact_rows, self.tail_rank, dtype=dtype))
            nn.init.normal_(self.tail_in, std=hidden_size**-0.5)
            nn.init.normal_(self.tail_out, std=self.tail_rank**-0.5)
        self.gate = nn.Linear(hidden_size, 1, dtype=dtype)
        self.linear = LinearHeads(k, n_symbols, hidden_size, dtype)
        if self.rest is HeadKind.autoregressive:
            add_character_decoder(self, decoder_size, dtype)
        elif self.rest is HeadKind.mlp:
            add_trunk(self, trunk_multiple, dtype)
        # until fit_vocabulary: distinct placeholder strings (the base-|Sigma| digits of 1..L)
        digits = (torch.arange(1, shortlist + 1).unsqueeze(1) // n_symbols ** torch.arange(k)) % n_symbols
        self.register_buffer("token_ids", torch.arange(shortlist))
        self.register_buffer("strings", digits)
        self.register_buffer("powers", hash_powers(k), persistent=False)
        # the vocabulary's distinct strings (attach_spelling), for a rest renormalised over its own
        self.register_buffer("vocab_strings", torch.zeros(0, k, dtype=torch.long), persistent=False)
        self._index_key, self._index, self._rest_key, self._rest_index = None, None, None, None
        self._packed: tuple[torch.Tensor, torch.Tensor] | None = None  # pack_rows

    def settings(self) -> HeadsConfig:
        common = dict(kind=self.kind, shortlist=self.size, context_tokens=self.context_tokens,
                      tail_rank=self.tail_rank, exact_rows=self.exact_rows)
        if self.rest is HeadKind.autoregressive:
            return HeadsConfig(**common, rest=self.rest, decoder_size=self.context.out_features)
        if self.rest is HeadKind.mlp:
            return HeadsConfig(**common, rest=self.rest, trunk_multiple=self.up.out_features // self.hidden_size,
                               rest_outside=self.rest_outside)
        return HeadsConfig(**common, rest_outside=self.rest_outside)

    def attach_spelling(self, spelling: SpellingTable) -> None:
        """Keep the vocabulary's distinct strings (spellable tokens, end tokens aside: they spell as EOS)."""
        self.vocab_strings = torch.unique(spelling.table[spelling.spelled], dim=0).to(self.strings.device)

    def _rest_lookup(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the rest's vocabulary strings R [|R|, k] sorted by key, their keys, their symbol matrix), rebuilt when
        the shortlist or the vocabulary changes."""
        if torch.compiler.is_compiling() and self._rest_index is not None:
            return self._rest_index  # built by prepare_decoding; a traced step cannot compare data pointers
        key = (self.strings.device, self.strings.data_ptr(), self.strings._version, self.vocab_strings.data_ptr())
        if self._rest_key != key:
            if self.vocab_strings.shape[0] == 0:
                raise RuntimeError("The shortlist's rest vocabulary is unknown: a SpeLLM attaches its spelling "
                                   "table to its heads (ShortlistHeads.attach_spelling).")
            strings = self.vocab_strings[self.slot_of(self.vocab_strings) < 0]
            keys, order = torch.sort(string_keys(strings, self.powers))
            self._rest_index = (strings[order], keys, spelling_matrix(strings[order], self.n_symbols, keep_pad=True))
            self._rest_key = key
        return self._rest_index

    def rest_strings(self) -> torch.Tensor:
        return self._rest_lookup()[0]

    def rest_tokens(self, table: torch.Tensor, spellable: torch.Tensor) -> torch.Tensor:
        """[|V|] bool: the tokens whose strings are the rest's vocabulary strings (spelled by the rest alone)."""
        return spellable & self.is_rest_string(table.to(self.strings.device)).to(spellable.device)

    def rest_symbol_matrix(self) -> torch.Tensor:
        """Sparse [k*S, |R|]: 1 at (i*S + s_i, r) for each rest vocabulary string r (built once per shortlist)."""
        return self._rest_lookup()[2]

    def is_rest_string(self, strings: torch.Tensor) -> torch.Tensor:
        """[..., k] -> [...]: whether each string is one of the rest's vocabulary strings."""
        rest, keys, _ = self._rest_lookup()
        position = torch.searchsorted(keys, string_keys(strings, self.powers)).clamp(max=keys.shape[0] - 1)
        return (rest[position] == strings).all(-1)

    @torch.no_grad()
    def fit_vocabulary(self, spelling: SpellingTable, counts: torch.Tensor | None = None) -> None:
        """The shortlist := the L spellable tokens most frequent in `counts` ([|V|] token counts; None: the lowest
        ids), keeping one token per string (the more frequent)."""
        table, spellable = spelling.table, spelling.spellable
        frequency = torch.zeros(table.shape[0]) if counts is None else counts[: table.shape[0]].float()
        ranked = sorted(torch.nonzero(spellable).flatten().tolist(), key=lambda v: (-frequency[v].item(), v))
        chosen, seen = [], set()
        for token in ranked:
            string = tuple(table[token].tolist())
            if string not in seen:
                seen.add(string)
                chosen.append(token)
            if len(chosen) == self.size:
                break
        if len(chosen) < self.size:
            raise ValueError(f"heads.shortlist={self.size}: the vocabulary spells only {len(chosen)} distinct "
                             "strings; use a smaller shortlist.")
        ids = torch.tensor(chosen)
        self.token_ids.copy_(ids)
        self.strings.copy_(table[ids])

    def _lookup(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sorted string keys [L], their slots [L], the sparse symbol matrix [k*S, L]), rebuilt when the strings
        change (fit_vocabulary, loading a checkpoint) or move."""
        if torch.compiler.is_compiling() and self._index is not None:
            return self._index  # built by prepare_decoding; a traced step cannot compare data pointers
        key = (self.strings.device, self.strings.data_ptr(), self.strings._version)
        if self._index_key != key:
            keys = string_keys(self.strings, self.powers)
            order = torch.argsort(keys)
            self._index = (keys[order], order, spelling_matrix(self.strings, self.n_symbols, keep_pad=True))
            self._index_key = key
        return self._index

    def slot_of(self, strings: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """[..., k] strings (and their string_keys, where the caller has them) -> [...] their shortlist slots, -1
        for strings no shortlist token spells."""
        sorted_keys, slots, _ = self._lookup()
        keys = string_keys(strings, self.powers) if keys is None else keys
        position = torch.searchsorted(sorted_keys, keys).clamp(max=self.size - 1)
        slot = slots[position]
        return torch.where((self.strings[slot] == strings).all(-1), slot, -1)

    def symbol_matrix(self) -> torch.Tensor:
        return self._lookup()[2]

    def forward(self, hidden: torch.Tensor, context: TokenContext | None = None) -> Shortlist:
        """The distribution at each position of hidden [n, d]; with heads.context_tokens, `context` (the tokens each
        position has seen, core.context) is required and their exact logits join the softmax."""
        if self.context_tokens and context is None:
            raise ValueError("heads.context_tokens=true scores the tokens each position has seen: call the heads with "
                             "their TokenContext (SpeLLM.token_context(ids)).")
        packed = self._packed if not torch.is_grad_enabled() else None
        if packed is not None:  # one matmul for the list, the gate and the rest heads
            logits = F.linear(hidden, *packed)
            scores, rest_logits = logits[..., : self.size + 1].float(), logits[..., self.size + 1:]
        else:
            scores, rest_logits = torch.cat([self.list_logits(hidden).float(), self.gate(hidden).float()], -1), None
        if self.context_tokens:  # after the rest's logit: log_weights[:, :L + 1] is the list and the rest, a view
            scores = torch.cat([scores, context.logits(hidden)], dim=-1)
        log_weights = F.log_softmax(scores, dim=-1)
        if self.rest is HeadKind.autoregressive:
            rest = Autoregressive(self, hidden)
        elif rest_logits is not None:
            rest = Factorised(rest_logits.unflatten(-1, (self.k, self.n_symbols)))
        else:
            rest = Factorised(self.linear.logits(trunk(self, hidden) if self.rest is HeadKind.mlp else hidden))
        if not self.context_tokens:
            return Shortlist(self, log_weights, rest)
        seen = log_weights[..., self.size + 1:]
        return Shortlist(self, log_weights[..., : self.size + 1], rest, self.context_weights(context, seen))

    def prepare_decoding(self) -> None:
        self.pack_rows()
        self._lookup()
        if self.rest_outside < 1:
            self._rest_lookup()

    def pack_rows(self) -> bool:
        """Lay the list's rows, the gate's and the rest heads' (heads.rest=linear, no factored tail) out as one
        matrix in place, the parameters becoming views of it (no copy kept): a decode step then reads them in one
        matmul, not three, which on a CPU saves the cold start of two small ones per step. Inference only (the
        parameters still train, separately, and load or copy_ into the same memory); moving the heads undoes it,
        and calling this again redoes it. Whether the heads are packed now."""
        if self.tail_rank or self.rest is not HeadKind.linear:
            return False
        if self._packed is not None:
            return True
        parts = [(self.weight, self.bias), (self.gate.weight, self.gate.bias), (self.linear.weight, self.linear.bias)]
        weight = torch.cat([w.detach().reshape(-1, self.hidden_size) for w, _ in parts])
        bias = torch.cat([b.detach().reshape(-1) for _, b in parts])
        start = 0
        for param_w, param_b in parts:
            rows = param_b.numel()
            param_w.data = weight[start: start + rows].view(param_w.shape)
            param_b.data = bias[start: start + rows].view(param_b.shape)
            start += rows
        self._packed = (weight, bias)  # until the heads move (_apply)
        return True

    def _apply(self, fn, recurse=True):
        self._packed = None  # .to(), .half(), ...: new tensors per parameter, no longer views of one matrix
        return super()._apply(fn, recurse)

    def list_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., L]: the list's logits (a factored tail: two small products instead of its rows')."""
        if not self.tail_rank:
            return F.linear(hidden, self.weight, self.bias)
        tail = F.linear(F.linear(hidden, self.tail_in), self.tail_out)
        return torch.cat([F.linear(hidden, self.weight), tail], dim=-1) + self.bias

    def list_rows(self) -> torch.Tensor:
        """[L, d]: the list's rows as one matrix (a factored tail multiplied out)."""
        if not self.tail_rank:
            return self.weight
        return torch.cat([self.weight, self.tail_out @ self.tail_in])

    @torch.no_grad()
    def fit_rows(self, unembedding: torch.Tensor, second_moment: torch.Tensor | None = None) -> None:
        """The list's rows := the teacher's unembedding rows of its tokens (exact logits); a factored tail := the
        best rank-r product of its rows: for the logits of hidden states with E[h h^T] = second_moment when given
        (core.low_rank.data_aware), else in Frobenius norm."""
        rows = unembedding[self.token_ids.to(unembedding.device)].float()
        if not self.tail_rank:
            self.weight.copy_(rows.to(self.weight.dtype))
            return
        self.weight.copy_(rows[: self.exact_rows].to(self.weight.dtype))
        tail = rows[self.exact_rows:]
        out, into = (truncated(tail, self.tail_rank) if second_moment is None else
                     data_aware(tail, second_moment.to(tail.device).float(), self.tail_rank))
        self.tail_out.copy_(out.to(self.tail_out.dtype))
        self.tail_in.copy_(into.to(self.tail_in.dtype))

    def context_weights(self, context: TokenContext, log_weights: torch.Tensor) -> ContextWeights:
        return ContextWeights(context, self.powers, log_weights)

    def context_eligible(self, table: torch.Tensor, spellable: torch.Tensor) -> torch.Tensor:
        """[|V|] bool: the tokens a context may score exactly (spellable, and no shortlist token spells their string:
        that string's mass is the shortlist's)."""
        return spellable & (self.slot_of(table.to(self.strings.device)) < 0).to(spellable.device)

    @torch.no_grad()
    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        """Shortlist rows := the teacher's unembedding rows of its tokens (exact logits); the rest heads as the
        linear heads; the gate := log(#rest) + the mean rest row (Jensen's lower bound on the rest's logsumexp)."""
        self.fit_rows(unembedding)
        self.bias.zero_()
        self.linear.init_from_unembedding(unembedding, spelling)
        rest = spelling.spellable.clone()
        rest[self.token_ids.cpu()] = False
        rows = unembedding[rest.to(unembedding.device)].float()
        self.gate.weight.copy_(rows.mean(0, keepdim=True).to(self.gate.weight.dtype))
        self.gate.bias.fill_(math.log(max(rows.shape[0], 1)))

    def decode_flops(self) -> int:
        extra = {HeadKind.autoregressive: character_decoder_flops, HeadKind.mlp: trunk_flops}.get(self.rest)
        rows = 2 * (self.size + 1) * self.hidden_size
        if self.tail_rank:
            rows = 2 * ((self.exact_rows + 1) * self.hidden_size + self.tail_rank * (self.hidden_size + self.size -
                                                                                    self.exact_rows))
        return rows + self.linear.decode_flops() + (extra(self) if extra else 0)


FACTORISED_KINDS = frozenset({HeadKind.linear, HeadKind.mlp})  # distributions that are products over positions
REST_KINDS = (HeadKind.linear, HeadKind.mlp, HeadKind.autoregressive)  # what can spell a shortlist's rest


def check_rest_outside(rest_outside: float, rest: HeadKind) -> float:
    """`heads.rest_outside` in (0, 1], and below 1 only for a product rest; a ValueError that says so otherwise."""
    if not 0 < rest_outside <= 1:
        raise ValueError(f"heads.rest_outside={rest_outside}: use a share in (0, 1] (1.0: the plain rest; e.g. 0.01: "
                         "the rest renormalised over its vocabulary strings).")
    if rest_outside < 1 and rest not in FACTORISED_KINDS:
        raise ValueError(f"heads.rest_outside={rest_outside} needs a rest that is a product (heads.rest=linear or "
                         f"mlp), not heads.rest={rest.value}.")
    return float(rest_outside)


def check_tail(tail_rank: int, exact_rows: int, shortlist: int, hidden_size: int | None) -> tuple[int, int]:
    """(heads.tail_rank, heads.exact_rows), checked: a factored tail of 1..d-1 columns (d = hidden_size, when known)
    and at least one row."""
    if tail_rank == 0:
        if exact_rows:
            raise ValueError(f"heads.exact_rows={exact_rows} is read with heads.tail_rank > 0 only; set both or "
                             "neither.")
        return 0, 0
    if tail_rank < 0 or (hidden_size is not None and tail_rank >= hidden_size):
        raise ValueError(f"heads.tail_rank={tail_rank}: use a rank below the model's width d"
                         f"{'' if hidden_size is None else f'={hidden_size}'}, or 0 for a list of full rows.")
    if not 0 <= exact_rows < shortlist:
        raise ValueError(f"heads.exact_rows={exact_rows}: use 0..{shortlist - 1} (fewer than heads.shortlist="
                         f"{shortlist}: the rows after them are the factored tail).")
    return tail_rank, exact_rows


def check_rest(rest: HeadKind | str) -> HeadKind:
    """`heads.rest` as a kind that can spell a shortlist's rest; a ValueError that names them otherwise."""
    if HeadKind(rest) not in REST_KINDS:
        raise ValueError(f"heads.rest={HeadKind(rest).value}: the shortlist's rest is spelled by "
                         f"{', '.join(kind.value for kind in REST_KINDS)} heads.")
    return HeadKind(rest)
HEAD_TYPES: dict[HeadKind, type[OutputHeads]] = {
    cls.kind: cls for cls in (LinearHeads, MLPHeads, MixtureHeads, AutoregressiveHeads, ShortlistHeads)}


# the one size setting each kind reads (linear reads none)
SIZE_FIELD = {HeadKind.mlp: "trunk_multiple", HeadKind.mixture: "components", HeadKind.autoregressive: "decoder_size",
              HeadKind.shortlist: "shortlist"}


def build_heads(settings: HeadsConfig, k: int, n_symbols: int, hidden_size: int,
                dtype: torch.dtype = torch.float32) -> OutputHeads:
    """The head module of `settings.kind`, randomly initialised."""
    data = settings_dict(settings)
    return HEAD_TYPES[HeadKind(data.pop("kind"))](k, n_symbols, hidden_size, dtype=dtype, **data)


def settings_dict(settings: HeadsConfig) -> dict:
    """The fields of `settings` that its kind reads, as JSON data (what a checkpoint records). A shortlist
    records its rest only when that is not the linear heads (checkpoints from before the option have none)."""
    kind = HeadKind(settings.kind)
    data = {"kind": kind.value, **({SIZE_FIELD[kind]: getattr(settings, SIZE_FIELD[kind])} if kind in SIZE_FIELD else {})}
    if kind is HeadKind.shortlist and HeadKind(settings.rest) is not HeadKind.linear:
        rest = HeadKind(settings.rest)
        data.update({"rest": rest.value, SIZE_FIELD[rest]: getattr(settings, SIZE_FIELD[rest])})
    if kind is HeadKind.shortlist and settings.rest_outside != 1.0:  # recorded only when set (older checkpoints)
        data["rest_outside"] = settings.rest_outside
    if kind is HeadKind.shortlist and settings.context_tokens:  # likewise
        data["context_tokens"] = True
    if kind is HeadKind.shortlist and settings.tail_rank:  # likewise
        data.update(tail_rank=settings.tail_rank, exact_rows=settings.exact_rows)
    return data


def heads_label(settings: HeadsConfig | dict) -> str:
    """A short name of a head type and its size setting, as tables show it: linear, mlp, mixture-8, shortlist-4096,
    shortlist-4096+autoregressive-128, shortlist-4096+mlp-4, ..."""
    data = settings_dict(settings) if isinstance(settings, HeadsConfig) else settings
    size = data.get("components", data.get("shortlist"))
    label = data["kind"] + (f"-{size}" if size is not None else "")
    rest = HeadKind(data.get("rest", "linear"))
    label += f"+{rest.value}-{data[SIZE_FIELD[rest]]}" if rest is not HeadKind.linear else ""
    label += f",rest_outside={data['rest_outside']:g}" if "rest_outside" in data else ""
    label += f",tail {data['exact_rows']}+rank-{data['tail_rank']}" if data.get("tail_rank") else ""
    return label + ("+context" if data.get("context_tokens") else "")
