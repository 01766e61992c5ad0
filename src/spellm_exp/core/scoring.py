"""Scoring text with a SpeLLM: the output segmentation of method.md, then the k-head log-probability.

A continuation is tokenized the way lm-eval tokenizes it for the teacher. Each run of tokens that
does not spell is re-covered by spellable vocabulary tokens, taking the longest spellable prefix
repeatedly; those segments are both what the heads must spell and the teacher-forced inputs.

    log p_S(y) = sum over segments j, sum over heads i, of log p_i(S[seg_j, i])   (mode "product")

Mode "vocab_normalized" renormalises each segment's score over the spellable vocabulary. log p_S is
whatever the head type's distribution over Sigma^k gives the segment's spelling (core.heads); for the
`linear` heads, the sum above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from spellm_exp.core.backbone import run_backbone, teacher_head
from spellm_exp.core.ceilings import is_ceiling
from spellm_exp.core.charset import SegmentationError, SpellingTable
from spellm_exp.errors import SpellmError

MODES = ("product", "vocab_normalized")


class ScoringError(SpellmError, ValueError):
    """A request whose score is not a number; a perplexity must never average one in."""


@dataclass(frozen=True)
class ScoreResult:
    logprob: float  # -inf when the request failed
    is_greedy: bool
    n_segments: int
    n_resegmented: int  # teacher tokens that did not spell and were re-covered
    failure: str | None = None


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing context spaces move to the continuation; tokenize the whole."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer(context + continuation).input_ids
    context_ids = tokenizer(context).input_ids if context else []
    continuation_ids = whole[len(context_ids):]
    if not context_ids:  # lm-eval conditions an empty context on the prefix token
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        context_ids = [prefix]
    return context_ids, continuation_ids


def segment(spelling: SpellingTable, token_ids: list[int]) -> tuple[list[int], int]:
    """Spellable segments covering `token_ids`, and how many input tokens had to be re-covered."""
    segments: list[int] = []
    run: list[int] = []  # consecutive unspellable tokens: covered together (partial UTF-8 joins up)
    n_resegmented = 0
    for token_id in [*token_ids, None]:
        if token_id is not None and not spelling.spellable[token_id]:
            run.append(token_id)
            continue
        if run:
            segments += _cover_run(spelling, run)
            n_resegmented += len(run)
            run = []
        if token_id is not None:
            segments.append(token_id)
    return segments, n_resegmented


def _cover_run(spelling: SpellingTable, run: list[int]) -> list[int]:
    pieces = [spelling.spellings.pieces[t] for t in run]
    if any(p is None for p in pieces):
        raise SegmentationError(f"tokens {run} include a special token, which has no spelling")
    return spelling.cover(b"".join(pieces))


def _continuation_hidden(causal_lm, pairs: list[tuple[list[int], list[int]]], batch_size: int):
    """Teacher-forced hidden states that predict each target: yields (index, [len(targets), d])."""
    device = next(causal_lm.parameters()).device
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        inputs = [ctx + targets[:-1] for ctx, targets in batch]
        width = max(map(len, inputs))
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for row, seq in enumerate(inputs):  # right padding: real positions keep their index
            ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
        hidden = run_backbone(causal_lm, ids.to(device), mask.to(device))[0]
        for row, (ctx, targets) in enumerate(batch):
            yield start + row, hidden[row, len(ctx) - 1: len(ctx) - 1 + len(targets)]


@torch.inference_mode()
def teacher_loglikelihoods(causal_lm, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8
                           ) -> list[tuple[float, bool]]:
    """(log p_T(continuation | context), is_greedy) per (context ids, continuation ids), as lm-eval's HFLM."""
    results: list[tuple[float, bool]] = [None] * len(pairs)
    for index, hidden in _continuation_hidden(causal_lm, pairs, batch_size):
        log_probs = torch.log_softmax(teacher_head(causal_lm, hidden).float(), dim=-1)
        targets = torch.tensor(pairs[index][1], device=log_probs.device)
        logprob = log_probs.gather(-1, targets.unsqueeze(-1)).sum().item()
        results[index] = (logprob, bool((log_probs.argmax(-1) == targets).all()))
    return results


@torch.inference_mode()
def score_token_requests(spellm: nn.Module, pairs: list[tuple[list[int], list[int]]], mode: str = "product",
                         batch_size: int = 8, raise_on_failure: bool = True, source: str = "heads"
                         ) -> list[ScoreResult]:
    """Scores of a SpeLLM (core.spellm) for continuation token ids after context ids (segmented as method.md says)."""
    if mode not in MODES:
        raise ValueError(f"score={mode} is unknown; use one of {MODES}.")
    if source != "heads" and not is_ceiling(source):  # where the string distribution comes from (SpeLLM.strings)
        raise ValueError(f"source={source} is unknown; use heads, teacher_marginals, teacher_mixture_M, "
                         "teacher_shortlist or teacher_shortlist_weights.")
    spelling = spellm.spelling
    prepared, owners, n_resegmented = [], [], {}
    results: list[ScoreResult | None] = [None] * len(pairs)
    for index, (context_ids, continuation_ids) in enumerate(pairs):
        try:
            segments, n_resegmented[index] = segment(spelling, continuation_ids)
        except SegmentationError as err:
            if raise_on_failure:
                raise
            results[index] = ScoreResult(-math.inf, False, 0, 0, failure=str(err))
            continue
        prepared.append((context_ids, segments))
        owners.append(index)

    table, spellable = spellm.spelling_table, spellm.spellable
    device = table.device
    for position, hidden in _continuation_hidden(spellm.causal_lm, prepared, batch_size):
        (context_ids, segments), index = prepared[position], owners[position]
        strings = spellm.strings(hidden, source, _seen_tokens(spellm, context_ids, segments))
        targets = table[torch.tensor(segments, device=device)]  # [n, k]
        per_segment = strings.log_prob(targets.unsqueeze(1)).squeeze(1)
        if mode == "product":
            # every position's argmax is the segment's symbol (no PAD rule: a segment never starts with PAD)
            greedy = bool((strings.greedy(forbid_pad_first=False) == targets).all())
            logprob = per_segment.sum().item()
        else:
            vocab = strings.vocab_log_probs(table, spellable)
            greedy = bool((table[vocab.argmax(-1)] == targets).all())  # same spelling, any id
            logprob = (per_segment - torch.logsumexp(vocab, dim=-1)).sum().item()
        if math.isnan(logprob) or logprob == math.inf:  # diverged heads: a failure, never a score
            failure = f"the log-likelihood is {logprob}: the heads' outputs are not numbers"
            if raise_on_failure:
                raise ScoringError(f"{failure}; check the checkpoint (it may come from a diverged run).")
            results[index] = ScoreResult(-math.inf, False, len(segments), n_resegmented[index], failure=failure)
            continue
        results[index] = ScoreResult(logprob, greedy, len(segments), n_resegmented[index])
    return results


def _seen_tokens(spellm: nn.Module, context_ids: list[int], segments: list[int]):
    """The tokens each target's position has seen (its input so far), for heads that score them (core.context)."""
    if not spellm.uses_context:
        return None
    inputs = torch.tensor([context_ids + segments[:-1]], device=spellm.spelling_table.device)
    start = len(context_ids) - 1
    return spellm.token_context(inputs).select(slice(start, start + len(segments)))


def score_requests(spellm: nn.Module, requests: list[tuple[str, str]], mode: str = "product",
                   batch_size: int = 8, raise_on_failure: bool = True, source: str = "heads") -> list[ScoreResult]:
    """SpeLLM scores of (context, continuation) strings, tokenized the way lm-eval tokenizes them."""
    pairs = [encode_pair(spellm.tokenizer, context, continuation) for context, continuation in requests]
    return score_token_requests(spellm, pairs, mode, batch_size, raise_on_failure, source)
