"""The one decode loop, shared by the teacher head and the SpeLLM heads.

Prefill the left-padded prompts once, then one backbone step per iteration with the KV cache. Every step runs
an output head on the device, and the head alone gives each row its next input id: the teacher its argmax
token; a SpeLLM in mode `vocab` the best spellable token; a SpeLLM in mode `free` (each head's argmax, cut at
the first PAD) the longest prefix of its string that is a vocabulary token, the rest of the string kept on the
device and fed the same way at the next steps before the heads are asked again (a vocabulary string is one id,
so one step). Both variants run exactly the same loop; only the head differs.

The host reads what the heads said and turns it into text and ids by the same rule (`SpellingTable.cover_units`,
checked against the ids the device fed), and ends rows (EOS, max_new_tokens, stop strings); rows are
independent, so a row's later steps never change another row.

Backends (`decode.backend`):
- `eager`: a growing KV cache, the step run as written, the host reading every step (it stops as soon as every
  row has ended);
- `compiled`: a static KV cache and backbone step + head as one `torch.compile`d function; the host reads every
  `sync_every` steps, so no step waits for the host. Greedy tokens equal the eager backend's. `compiler`:
  `cudagraphs` (the traced step replayed as one CUDA graph, PyTorch's own kernels: seconds to build, which is
  what a bench over seven architectures can afford), `inductor` (generated, fused kernels; on a GPU in
  mode reduce-overhead, also a CUDA graph; minutes to build for large models), `auto`: cudagraphs on a GPU,
  inductor on a CPU (where CUDA graphs do not exist). The step is one graph (the heads' lookups are built before it
  runs: `OutputHeads.prepare_decoding`), and it checks no guards on the modules (`Decoder._step_for`)."""

from __future__ import annotations

import time
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from spellm_exp.core.backbone import run_backbone, static_cache, teacher_head
from spellm_exp.core.charset import EOS, PAD, TokenSpellings
from spellm_exp.core.context import SeenTokens
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.core.vocab_lookup import VocabLookup, drop_prefix, normalise

DECODE_MODES = ("teacher", "free", "vocab")
BACKENDS = ("eager", "compiled")
COMPILERS = ("auto", "cudagraphs", "inductor")
CACHE_BUCKET = 64  # static caches are sized in multiples of this, so similar prompt lengths reuse a compiled step


def _bucketed(size: int) -> int:
    """`size` rounded up to a multiple of CACHE_BUCKET."""
    return -(-size // CACHE_BUCKET) * CACHE_BUCKET


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
    steps: int = 0  # backbone forward passes after the prefill that the rows needed
    strings: int = 0  # outputs proposed by the head (tokens for the teacher)
    new_tokens: int = 0  # input ids those strings became
    new_chars: int = 0
    non_vocab_strings: int = 0
    prefill_seconds: float = 0.0  # prompt pass and first head step, by the loop's clock (the bench's syncs)
    decode_seconds: float = 0.0  # every step after the prefill (backbone step + head + host reading)
    # per executed step (eager); the compiled backend times its steps together: each gets their mean
    step_seconds: list[float] = field(default_factory=list)

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


class HeadStep(NamedTuple):
    """One step of an output head, on the device."""

    ids: torch.Tensor  # [n] each row's next input id
    output: torch.Tensor  # [n, w] what the head said (a token id, or a string of symbols), read by the host
    asked: torch.Tensor  # [n] bool: the row had nothing left to feed, so the head's output is its new string
    pending: torch.Tensor  # [n, w] what is left to feed (a string's symbols after the fed prefix)


def _token_step(ids: torch.Tensor, pending: torch.Tensor) -> HeadStep:
    return HeadStep(ids, ids.unsqueeze(1), torch.ones_like(ids, dtype=torch.bool), pending)


class TeacherHead:
    """The teacher's own output layer: argmax over the vocabulary."""

    width = 1  # the output is one token id
    max_ids_per_string = 1

    def __init__(self, causal_lm, spellings: TokenSpellings):
        self.causal_lm, self.spellings = causal_lm, spellings

    def prepare(self, device: torch.device) -> None:
        """Anything to build before a (compiled) step runs."""

    def begin(self, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> None:
        """The prompts (left-padded ids and mask [n, T]) before the prefill and at most `steps` head steps to come:
        nothing to keep here."""

    def step(self, hidden: torch.Tensor, pending: torch.Tensor) -> HeadStep:
        return _token_step(teacher_head(self.causal_lm, hidden).argmax(-1), pending)

    def proposal(self, output: list[int]) -> Proposal:
        (token_id,) = output
        pieces = self.spellings.pieces
        # ids past the tokenizer (a padded embedding, or a random-init model with a smaller stand-in
        # tokenizer) carry no text but are still fed back
        text = (pieces[token_id] if token_id < len(pieces) else None) or b""
        return Proposal(text, (token_id,), end=token_id in self.spellings.end_ids)


class SpeLLMHead:
    """The k character heads, in mode `free` (per-head argmax) or `vocab` (best spellable token)."""

    def __init__(self, spellm: SpeLLM, mode: str = "free"):
        if mode not in ("free", "vocab"):
            raise ValueError(f"decode.mode={mode} is unknown for a SpeLLM; use free or vocab.")
        self.spellm, self.mode = spellm, mode
        self.spelling = spellm.spelling
        tokenizer = spellm.tokenizer
        # fed where no vocabulary token starts the rest of a string (its text is still emitted)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.width = self.max_ids_per_string = spellm.k if mode == "free" else 1
        self.lookup: VocabLookup | None = None  # string -> id on the device, built by `prepare`
        # heads that score the seen tokens (heads.context_tokens): the current call's, and the buffers of each
        # (rows, slots) shape, refilled in place by every call of that shape (fixed addresses for a captured graph)
        self.seen: SeenTokens | None = None
        self._seen_buffers: dict[tuple[int, int], SeenTokens] = {}

    def prepare(self, device: torch.device) -> None:
        self.spellm.heads.prepare_decoding()
        if self.mode == "free" and (self.lookup is None or self.lookup.sorted_keys.device != device):
            self.lookup = VocabLookup(self.spelling).to(device)

    def begin(self, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> None:
        prompt = self.spellm.token_context(ids, mask)
        if prompt is None:
            self.seen = None
            return
        # a slot per distinct prompt token and per head step, in buckets so similar prompts share a compiled step
        capacity = _bucketed(prompt.ids.shape[1] + steps)
        key = (ids.shape[0], capacity)
        if key not in self._seen_buffers:
            self._seen_buffers[key] = self.spellm.seen_tokens(*key)
            if ids.device.type == "cuda":
                for buffer in self._seen_buffers[key].buffers():
                    torch._dynamo.mark_static_address(buffer)
        self.seen = self._seen_buffers[key].load(prompt)

    def step(self, hidden: torch.Tensor, pending: torch.Tensor) -> HeadStep:
        if self.spellm.uses_context and self.seen is None:
            raise RuntimeError("heads.context_tokens: the decoder did not pass the prompts (SpeLLMHead.begin).")
        strings = self.spellm.strings(hidden, context=None if self.seen is None else self.seen.context())
        if self.mode == "vocab":
            step = _token_step(strings.vocab_log_probs(self.spellm.spelling_table, self.spellm.spellable).argmax(-1),
                               pending)
        else:
            string = normalise(strings.greedy(forbid_pad_first=True))
            asked = pending[:, 0] == PAD
            source = torch.where(asked.unsqueeze(1), string, pending)
            ids, length = self.lookup.cover(source)
            covered = length > 0
            rest = torch.where(covered.unsqueeze(1), drop_prefix(source, length), PAD)
            step = HeadStep(torch.where(covered, ids, self.pad_id), string, asked, rest)
        if self.seen is not None:  # what the backbone reads next is seen from the next step on
            self.seen.add(step.ids)
        return step

    def proposal(self, output: list[int]) -> Proposal:
        if self.mode == "vocab":
            return self._token(output[0])
        if output[0] == EOS:
            return Proposal(b"", (self.spelling.spellings.eos_id,), end=True)
        length = next((i for i, s in enumerate(output) if s in (PAD, EOS)), len(output))
        units = tuple(self.spellm.alphabet.unit_of(s) for s in output[:length])
        ids, complete = self.spelling.cover_units(units)
        if not complete:
            ids.append(self.pad_id)
        return Proposal(self.spellm.alphabet.to_bytes(units), tuple(ids), in_vocab=units in self.spelling.string_to_id)

    def _token(self, token_id: int) -> Proposal:
        end = token_id in self.spelling.spellings.end_ids
        return Proposal(b"" if end else self.spelling.spellings.pieces[token_id], (token_id,), end=end)


class DecodeMismatch(RuntimeError):
    """The device fed an id the host's rule does not give: a bug, never a property of the input."""


class _Rows:
    """The host's reading of the head steps: each row's text and ids, and when it ends."""

    def __init__(self, head, n_rows: int, max_new_tokens: int, stop, ignore_eos: bool, stats: DecodeStats):
        self.head, self.max_new_tokens, self.stop, self.ignore_eos, self.stats = (
            head, max_new_tokens, tuple(stop), ignore_eos, stats)
        self.texts = [bytearray() for _ in range(n_rows)]
        self.ids: list[list[int]] = [[] for _ in range(n_rows)]
        self.strings = [0] * n_rows
        self.done = [max_new_tokens <= 0] * n_rows
        self.to_feed = [deque() for _ in range(n_rows)]  # ids of the current string that the device will feed
        self.steps_read = 0
        self.ended_at: int | None = 0 if all(self.done) else None  # backbone steps the rows needed

    def read(self, outputs: list, asked: list, fed: list) -> None:
        """One head step: per row, what the head said, whether it was asked, and the id fed next."""
        for row, (output, was_asked, fed_id) in enumerate(zip(outputs, asked, fed)):
            if self.done[row]:
                continue
            if was_asked != (not self.to_feed[row]):
                raise DecodeMismatch(f"row {row}, step {self.steps_read}: the device and the host disagree on "
                                     "whether a string was complete.")
            if was_asked and not self._accept(row, self.head.proposal(output)):
                continue
            expected = self.to_feed[row].popleft()
            if expected != fed_id:
                raise DecodeMismatch(f"row {row}, step {self.steps_read}: the device fed id {fed_id}, the host's "
                                     f"rule gives {expected}.")
        if self.ended_at is None and all(self.done):
            self.ended_at = self.steps_read
        self.steps_read += 1

    def _accept(self, row: int, proposal: Proposal) -> bool:
        """Record a new string; False where the row ends with it (its ids need not be fed)."""
        if proposal.end and not self.ignore_eos:
            self.done[row] = True
            return False
        self.texts[row] += proposal.text
        self.ids[row] += proposal.ids
        self.to_feed[row].extend(proposal.ids)
        self.strings[row] += 1
        self.stats.strings += 1
        self.stats.new_tokens += len(proposal.ids)
        self.stats.non_vocab_strings += not proposal.in_vocab
        if self.strings[row] >= self.max_new_tokens or any(s.encode("utf-8") in self.texts[row] for s in self.stop):
            self.done[row] = True
            return False
        return True

    def generation(self) -> Generation:
        decoded = [_cut_at_stop(bytes(t).decode("utf-8", errors="replace"), self.stop) for t in self.texts]
        self.stats.new_chars = sum(map(len, decoded))
        return Generation(decoded, self.ids, self.stats)


def _read(rows: _Rows, steps: list[HeadStep]) -> None:
    """Copy head steps to the host (one copy for all of them) and read them in order."""
    outputs = torch.stack([s.output for s in steps]).tolist()
    asked = torch.stack([s.asked for s in steps]).tolist()
    fed = torch.stack([s.ids for s in steps]).tolist()
    for step in zip(outputs, asked, fed):
        rows.read(*step)


def _cut_at_stop(text: str, stop) -> str:
    cuts = [text.index(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def resolve_compiler(compiler: str, device: torch.device) -> str:
    """decode.compiler `auto` -> cudagraphs on a GPU, inductor on a CPU; cudagraphs needs a GPU."""
    if compiler not in COMPILERS:
        raise ValueError(f"decode.compiler={compiler} is unknown; use one of {COMPILERS}.")
    if compiler == "cudagraphs" and device.type != "cuda":
        raise ValueError("decode.compiler=cudagraphs needs a CUDA GPU; use auto or inductor on a CPU.")
    return compiler if compiler != "auto" else "cudagraphs" if device.type == "cuda" else "inductor"


class Decoder:
    """Greedy decoding with one output head and backend; keeps its compiled steps and static caches between
    calls (one per batch size and cache length), so the bench compiles once per shape."""

    def __init__(self, causal_lm, tokenizer, head, backend: str = "eager", compiler: str = "auto",
                 sync_every: int = 16):
        if backend not in BACKENDS:
            raise ValueError(f"decode.backend={backend} is unknown; use one of {BACKENDS}.")
        if sync_every < 1:
            raise ValueError(f"sync_every={sync_every} must be >= 1.")
        self.causal_lm, self.tokenizer, self.head, self.backend, self.sync_every = (
            causal_lm, tokenizer, head, backend, sync_every)
        self.device = next(causal_lm.parameters()).device
        self.compiler = resolve_compiler(compiler, self.device)
        self._compiled: dict[tuple[int, int], tuple] = {}

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int = 32, stop: tuple[str, ...] | list[str] = (),
                 ignore_eos: bool = False, max_steps: int | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> Generation:
        """Greedy decoding of `prompts`; `max_new_tokens` bounds the strings per row and `max_steps` the
        backbone steps after the prefill (the bench's fixed amount of work)."""
        device = self.device
        enc = self.tokenizer(list(prompts), padding=True, padding_side="left", return_tensors="pt")
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        stats = DecodeStats(rows=ids.shape[0], prompt_tokens=int(mask.sum()))
        rows = _Rows(self.head, ids.shape[0], max_new_tokens, stop, ignore_eos, stats)
        limit = max(max_new_tokens, 0) * self.head.max_ids_per_string  # enough steps for every row to end
        limit = limit if max_steps is None else min(limit, max_steps)
        self.head.prepare(device)
        self.head.begin(ids, mask, limit + 1)  # the prefill's head step and at most `limit` more
        pending = torch.full((ids.shape[0], self.head.width), PAD, dtype=torch.long, device=device)
        loop = self._eager if self.backend == "eager" else self._compiled_loop
        loop(ids, mask, positions, pending, rows, limit, clock)
        return rows.generation()

    def _eager(self, ids, mask, positions, pending, rows: _Rows, limit: int, clock) -> None:
        stats = rows.stats
        started = clock()
        hidden, cache = run_backbone(self.causal_lm, ids, mask, positions, use_cache=True)
        step = self.head.step(hidden[:, -1], pending)
        _read(rows, [step])
        prefilled = clock()
        while rows.ended_at is None and stats.steps < limit:
            step_started = clock()
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
            hidden, cache = run_backbone(self.causal_lm, step.ids.unsqueeze(1), mask, positions, cache,
                                         use_cache=True)
            step = self.head.step(hidden[:, -1], step.pending)
            _read(rows, [step])
            stats.steps += 1
            stats.step_seconds.append(clock() - step_started)
        stats.prefill_seconds, stats.decode_seconds = prefilled - started, clock() - prefilled

    def _compiled_loop(self, ids, mask, positions, pending, rows: _Rows, limit: int, clock) -> None:
        stats = rows.stats
        n_rows, length = ids.shape
        cache_len = _bucketed(length + limit + 1)
        cache, step_fn = self._step_for(n_rows, cache_len)
        full_mask = torch.cat([mask, mask.new_ones(n_rows, cache_len - length)], dim=1)
        started = clock()
        cache.reset()
        hidden, _ = run_backbone(self.causal_lm, ids, mask, positions, cache, use_cache=True)
        step = self.head.step(hidden[:, -1], pending)
        prefilled = clock()
        positions = positions[:, -1:]
        unread, executed = [step], 0
        graphs = self.device.type == "cuda"  # both compilers replay CUDA graphs there
        while True:
            if len(unread) >= self.sync_every or executed >= limit:
                _read(rows, unread)
                unread = []
                if rows.ended_at is not None or executed >= limit:
                    break
            positions = positions + 1
            if graphs:  # a new step of the CUDA graph tree: the previous outputs may be overwritten, so keep clones
                torch.compiler.cudagraph_mark_step_begin()
            step = step_fn(step.ids, positions, full_mask, step.pending)
            if graphs:
                step = HeadStep(*(t.clone() for t in step))
            unread.append(step)
            executed += 1
        finished = clock()
        stats.steps = rows.ended_at if rows.ended_at is not None else executed
        stats.prefill_seconds, stats.decode_seconds = prefilled - started, finished - prefilled
        stats.step_seconds = [stats.decode_seconds / executed] * executed if executed else []

    def _step_for(self, n_rows: int, cache_len: int):
        """The static cache and compiled step (backbone step + head) for this batch size and cache length."""
        key = (n_rows, cache_len)
        if key not in self._compiled:
            cache = static_cache(self.causal_lm, cache_len)

            def step(ids, positions, mask, pending):
                hidden, _ = run_backbone(self.causal_lm, ids.unsqueeze(1), mask, positions, cache, use_cache=True)
                return self.head.step(hidden[:, -1], pending)

            # No guards on the modules' attributes and parameters: checking them before every step costs about 1 ms
            # on a CPU (for both heads). That is safe because a Decoder's model and head never change and this step
            # is its own: dynamo keeps compiled graphs per code object, so each step gets a fresh copy of its code,
            # and no other Decoder (another model of the same shapes) can ever run its graph.
            step = types.FunctionType(step.__code__.replace(), step.__globals__, step.__name__, step.__defaults__,
                                      step.__closure__)
            options = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
            if self.compiler == "inductor" and self.device.type == "cuda":
                options["triton.cudagraphs"] = True  # what mode=reduce-overhead sets (mode excludes options)
            backend = "cudagraphs" if self.compiler == "cudagraphs" else "inductor"
            self._compiled[key] = (cache, torch.compile(step, dynamic=False, backend=backend, options=options))
        return self._compiled[key]


def generate(causal_lm, tokenizer, prompts: list[str], head, backend: str = "eager", compiler: str = "auto",
             **kwargs) -> Generation:
    """One call of `Decoder(causal_lm, tokenizer, head, backend, compiler).generate(prompts, **kwargs)`."""
    return Decoder(causal_lm, tokenizer, head, backend, compiler).generate(prompts, **kwargs)


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
