"""The one decode loop, shared by the teacher head and the SpeLLM heads.

Prefill the left-padded prompts once, then one backbone step per iteration with the KV cache.
At each step an output head proposes, for every row, the string it emits and the input ids that
string becomes. The teacher proposes one token. A SpeLLM proposes a string (`free`: each head's
argmax, cut at the first PAD; `vocab`: the best spellable token); a string that is not exactly
one vocabulary token becomes several input ids, which are fed one per step before the heads
are asked again. So both variants run exactly the same loop, and only the head differs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from spellm_exp.core.backbone import run_backbone, teacher_head
from spellm_exp.core.charset import (
    EOS,
    PAD,
    SegmentationError,
    TokenSpellings,
)
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.core.vocab_lookup import VocabLookup

DECODE_MODES = ("teacher", "free", "vocab")


@dataclass(frozen=True)
class Proposal:
    text: bytes  # what the row's output gains
    ids: tuple[int, ...]  # input ids that carry it into the next steps
    end: bool = False  # the row emitted EOS
    in_vocab: bool = True  # the emitted string is exactly one vocabulary token


@dataclass
class DecodeStats:
    rows: int = 0
    prompt_tokens: int = 0
    steps: int = 0  # backbone forward passes after the prefill
    strings: int = 0  # outputs proposed by the head (tokens for the teacher)
    new_tokens: int = 0  # input ids those strings became
    new_chars: int = 0
    non_vocab_strings: int = 0
    prefill_seconds: float = 0.0  # by the loop's clock (the bench passes one that syncs the device)
    decode_seconds: float = 0.0  # every step after the prefill, output heads included
    # per step: (seconds, whether the output head ran); a string of several ids feeds the ones after its
    # first without asking the head, so only the steps with the head are whole decode steps
    step_seconds: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def non_vocab_share(self) -> float:
        return self.non_vocab_strings / self.strings if self.strings else 0.0

    def as_dict(self) -> dict:
        return {**self.__dict__, "non_vocab_share": self.non_vocab_share}


@dataclass
class Generation:
    texts: list[str]
    token_ids: list[list[int]]
    stats: DecodeStats = field(default_factory=DecodeStats)


class TeacherHead:
    """The teacher's own output layer: argmax over the vocabulary."""

    def __init__(self, causal_lm, spellings: TokenSpellings):
        self.causal_lm, self.spellings = causal_lm, spellings

    def propose(self, hidden: torch.Tensor) -> list[Proposal]:
        ids = teacher_head(self.causal_lm, hidden).argmax(-1).tolist()
        pieces = self.spellings.pieces
        # ids past the tokenizer (a padded embedding, or a random-init model with a smaller stand-in
        # tokenizer) carry no text but are still fed back
        return [Proposal((pieces[i] if i < len(pieces) else None) or b"", (i,), end=i in self.spellings.end_ids)
                for i in ids]


@dataclass(frozen=True)
class GreedyStrings:
    """A `free` step's result on the device: [n, k] greedy symbols, the token id each spells (-1: none), and
    whether it is a vocabulary token (or the end)."""

    symbols: torch.Tensor
    ids: torch.Tensor
    in_vocab: torch.Tensor


class SpeLLMHead:
    """The k character heads, in mode `free` (per-head argmax) or `vocab` (best spellable token)."""

    def __init__(self, spellm: SpeLLM, mode: str = "free"):
        if mode not in ("free", "vocab"):
            raise ValueError(f"decode={mode} is unknown for a SpeLLM; use free or vocab.")
        self.spellm, self.mode = spellm, mode
        self.spelling = spellm.spelling
        self.tokenizer = spellm.tokenizer
        self.lookup: VocabLookup | None = None  # built by the first `free` step, where the heads run

    def propose(self, hidden: torch.Tensor) -> list[Proposal]:
        if self.mode == "vocab":
            scores = self.spellm.heads(hidden).vocab_log_probs(self.spellm.spelling_table, self.spellm.spellable)
            return [self._token(i) for i in scores.argmax(-1).tolist()]
        return self.strings(self.symbols(hidden))

    def symbols(self, hidden: torch.Tensor) -> GreedyStrings:
        """The device part of a `free` step: the heads' greedy string (linear: k argmaxes, the first not PAD)
        and the token id it spells, looked up on the device (core.vocab_lookup)."""
        symbols = self.spellm.heads(hidden).greedy(forbid_pad_first=True)
        if self.lookup is None or self.lookup.sorted_keys.device != symbols.device:
            self.lookup = VocabLookup(self.spelling).to(symbols.device)
        return GreedyStrings(symbols, *self.lookup(symbols))

    def strings(self, greedy: GreedyStrings) -> list[Proposal]:
        """The host part: one copy of the ids (and of the symbols of the rows that spell no token), then each
        row's string and the input ids that carry it."""
        ids, in_vocab = greedy.ids.tolist(), greedy.in_vocab.tolist()
        others = iter(greedy.symbols[~greedy.in_vocab].tolist() if not all(in_vocab) else [])
        return [self._token(token_id) if found else self._string(next(others))
                for token_id, found in zip(ids, in_vocab)]

    def _token(self, token_id: int) -> Proposal:
        end = token_id in self.spelling.spellings.end_ids
        return Proposal(b"" if end else self.spelling.spellings.pieces[token_id], (token_id,), end=end)

    def _string(self, symbols: list[int]) -> Proposal:
        if symbols[0] == EOS:
            return Proposal(b"", (self.spelling.spellings.eos_id,), end=True)
        length = next((i for i, s in enumerate(symbols) if s in (PAD, EOS)), len(symbols))
        units = tuple(self.spellm.alphabet.unit_of(s) for s in symbols[:length])
        text = self.spellm.alphabet.to_bytes(units)
        token_id = self.spelling.string_to_id.get(units)
        if token_id is not None:
            return Proposal(text, (token_id,))
        return Proposal(text, tuple(self._ids_for(text)), in_vocab=False)

    def _ids_for(self, text: bytes) -> list[int]:
        try:
            return self.tokenizer(text.decode("utf-8"), add_special_tokens=False).input_ids
        except UnicodeDecodeError:  # bytes (or escaped bytes) can be partial UTF-8: cover with byte tokens
            try:
                return self.spelling.cover(text)
            except SegmentationError:
                return []


@torch.inference_mode()
def generate(causal_lm, tokenizer, prompts: list[str], head, max_new_tokens: int = 32,
             stop: tuple[str, ...] | list[str] = (), ignore_eos: bool = False, max_steps: int | None = None,
             clock: Callable[[], float] = time.perf_counter) -> Generation:
    """Greedy decoding of `prompts` with `head`; `max_new_tokens` bounds the strings per row and
    `max_steps` the backbone steps after the prefill (the bench's fixed amount of work)."""
    device = next(causal_lm.parameters()).device
    enc = tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    n_rows = ids.shape[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stats = DecodeStats(rows=n_rows, prompt_tokens=int(mask.sum()))

    started = clock()
    hidden, cache = run_backbone(causal_lm, ids, mask, positions, use_cache=True)
    hidden = hidden[:, -1]
    prefilled = clock()
    texts = [bytearray() for _ in range(n_rows)]
    emitted_ids: list[list[int]] = [[] for _ in range(n_rows)]
    pending = [deque() for _ in range(n_rows)]
    n_strings, done = [0] * n_rows, [max_new_tokens <= 0] * n_rows

    while True:
        step_started = clock()
        asked = any(not d and not p for d, p in zip(done, pending))
        proposals = head.propose(hidden) if asked else None
        for row in range(n_rows):
            if done[row] or pending[row]:
                continue
            proposal = proposals[row]
            if proposal.end and not ignore_eos:
                done[row] = True
                continue
            texts[row] += proposal.text
            emitted_ids[row] += proposal.ids
            pending[row].extend(proposal.ids)
            n_strings[row] += 1
            stats.strings += 1
            stats.new_tokens += len(proposal.ids)
            stats.non_vocab_strings += not proposal.in_vocab
            if n_strings[row] >= max_new_tokens or _hit_stop(texts[row], stop):
                done[row] = True
        if all(done) or (max_steps is not None and stats.steps >= max_steps):
            break
        next_ids = torch.tensor([pending[r].popleft() if pending[r] and not done[r] else pad_id
                                 for r in range(n_rows)], device=device).unsqueeze(1)
        mask = torch.cat([mask, mask.new_ones(n_rows, 1)], dim=1)
        positions = positions[:, -1:] + 1
        hidden, cache = run_backbone(causal_lm, next_ids, mask, positions, cache, use_cache=True)
        hidden = hidden[:, -1]
        stats.steps += 1
        stats.step_seconds.append((clock() - step_started, asked))
    finished = clock()
    stats.prefill_seconds, stats.decode_seconds = prefilled - started, finished - prefilled

    decoded = [_cut_at_stop(bytes(t).decode("utf-8", errors="replace"), stop) for t in texts]
    stats.new_chars = sum(map(len, decoded))
    return Generation(decoded, emitted_ids, stats)


def _hit_stop(text: bytearray, stop) -> bool:
    return any(s.encode("utf-8") in text for s in stop)


def _cut_at_stop(text: str, stop) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def decode(model, prompts: list[str], mode: str = "free", **kwargs) -> Generation:
    """Decode with a SpeLLM (`free`, `vocab`) or with its teacher's own head (`teacher`)."""
    if mode not in DECODE_MODES:
        raise ValueError(f"decode={mode} is unknown; use one of {DECODE_MODES}.")
    if isinstance(model, SpeLLM):
        head = (TeacherHead(model.causal_lm, model.spelling.spellings) if mode == "teacher"
                else SpeLLMHead(model, mode))
        return generate(model.causal_lm, model.tokenizer, prompts, head, **kwargs)
    if mode != "teacher":
        raise ValueError(f"decode={mode} needs a SpeLLM; a plain teacher decodes with mode='teacher'.")
    head = TeacherHead(model.model, TokenSpellings.from_tokenizer(model.tokenizer))
    return generate(model.model, model.tokenizer, prompts, head, **kwargs)
