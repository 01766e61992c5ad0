"""An lm-eval `LM` that scores the teacher and its SpeLLM with the same code.

A plain `lm_eval.api.model.LM` subclass (as BLT's wrapper does), because a SpeLLM's outputs are
not the input vocabulary. `variant=teacher` scores through the teacher's own head exactly as
lm-eval's HFLM does; `variant=spellm` scores through the k character heads with the output
segmentation of method.md, and generates with the shared decode loop. The ceiling variants score like
`spellm` but with a distribution built from the teacher in place of the heads (core.ceilings,
loglikelihood tasks only): `teacher_marginals`, the teacher's own per-head marginals (perfect
independent heads: what the factorisation itself costs), `teacher_mixture_M` (its top M-1 tokens
exact plus a product of the rest: what a mixture of M products could reach), and for a shortlist SpeLLM
`teacher_shortlist` (its shortlist's ceiling) and `teacher_shortlist_weights` (the teacher's weights, the
heads' rest spelling).
"""

from __future__ import annotations

from collections import defaultdict

import lm_eval.evaluator
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from spellm_exp.core.ceilings import SHORTLIST_SOURCES, is_ceiling
from spellm_exp.core.charset import TokenSpellings
from spellm_exp.core.decoding import Decoder, SpeLLMHead, TeacherHead
from spellm_exp.core.heads import ShortlistHeads
from spellm_exp.core.scoring import (
    MODES,
    encode_pair,
    score_token_requests,
    teacher_loglikelihoods,
)
from spellm_exp.core.spellm import META_FILE, SpeLLM, checkpoint_folder
from spellm_exp.errors import SpellmError
from spellm_exp.provenance import git_sha
from spellm_exp.teachers import ModelConfig, Teacher, load_teacher

# lm-eval records the commit of the working directory by running `git describe`, which prints "fatal: not a git
# repository" outside one; the code that scores is ours, so results.json's git_hash names our commit instead
lm_eval.evaluator.get_git_commit_hash = git_sha

VARIANTS = ("teacher", "spellm", "teacher_marginals", "teacher_mixture_M", *SHORTLIST_SOURCES)


class SpeLLMEvalError(SpellmError, ValueError):
    """Bad model arguments for the harness; the message names the fix."""


@register_model("spellm")
class SpeLLMHarnessLM(LM):
    """`--model spellm --model_args checkpoint=<run or spellm folder>[,variant=teacher|spellm|teacher_marginals|
    teacher_mixture_M|teacher_shortlist|teacher_shortlist_weights,...]`."""

    def __init__(self, checkpoint: str | None = None, model: str | None = None, variant: str = "spellm",
                 batch_size: int | str = 8, score: str = "product", decode_mode: str = "free",
                 decode_backend: str = "eager", decode_compiler: str = "auto",
                 max_length: int = 2048, max_gen_toks: int = 256, cache_dir: str | None = None,
                 spellm: SpeLLM | None = None, teacher: Teacher | None = None, **_harness_extras):
        # _harness_extras: what the harness passes to every model (device, max_batch_size, ...): CPU/GPU
        # placement follows the loaded model here
        super().__init__()
        if variant not in ("teacher", "spellm") and not _is_ceiling(variant):
            raise SpeLLMEvalError(f"variant={variant} is unknown; use one of {VARIANTS}.")
        if score not in MODES:
            raise SpeLLMEvalError(f"score={score} is unknown; use one of {MODES}.")
        if spellm is None and teacher is None:
            spellm, teacher = _load(checkpoint, model, variant, cache_dir)
        if variant != "teacher" and spellm is None:
            raise SpeLLMEvalError(f"variant={variant} needs a SpeLLM checkpoint: checkpoint=<folder>.")
        if variant in SHORTLIST_SOURCES and not isinstance(spellm.heads, ShortlistHeads):
            raise SpeLLMEvalError(f"variant={variant} needs a checkpoint with shortlist heads (heads=shortlist); "
                                  f"this one has {spellm.heads.kind.value} heads.")
        self.spellm, self.variant = spellm, variant
        self.causal_lm = spellm.causal_lm if spellm is not None else teacher.model
        self.tokenizer = spellm.tokenizer if spellm is not None else teacher.tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        self.score_mode, self.decode_mode = score, decode_mode
        self.max_length, self.max_gen_toks = int(max_length), int(max_gen_toks)
        self.failures = 0  # SpeLLM requests it could not score: no spellable tokens cover them, or a NaN score
        head = (TeacherHead(self.causal_lm, TokenSpellings.from_tokenizer(self.tokenizer))
                if variant == "teacher" else SpeLLMHead(spellm, decode_mode) if variant == "spellm" else None)
        self._decoder = (Decoder(self.causal_lm, self.tokenizer, head, decode_backend, decode_compiler)
                         if head is not None else None)

    # --- loglikelihood ------------------------------------------------------------------------
    def _truncate(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        keep = max(self.max_length - len(continuation), 1)
        return context[-keep:], continuation[-self.max_length:]

    def _score_pairs(self, pairs: list[tuple[list[int], list[int]]], raise_on_failure: bool = False
                     ) -> list[tuple[float, bool]]:
        pairs = [self._truncate(c, t) for c, t in pairs]
        if self.variant == "teacher":
            return teacher_loglikelihoods(self.causal_lm, pairs, self.batch_size)
        source = "heads" if self.variant == "spellm" else self.variant
        results = score_token_requests(self.spellm, pairs, self.score_mode, self.batch_size,
                                       raise_on_failure=raise_on_failure, source=source)
        self.failures += sum(r.failure is not None for r in results)
        return [(r.logprob, r.is_greedy) for r in results]

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, *request.args) for request in requests]
        results = []
        for start in tqdm(range(0, len(pairs), 64), disable=disable_tqdm, desc=f"loglikelihood ({self.variant})"):
            results += self._score_pairs(pairs[start:start + 64])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text | prefix token) per text, as HFLM with add_bos_token=False: the text's own tokens only
        (a BOS the tokenizer would add is the condition, not a scored byte of the text). A text the SpeLLM
        cannot spell fails here, loudly: a perplexity must never average a -inf in."""
        prefix = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        totals = []
        for request in tqdm(requests, disable=disable_tqdm, desc=f"loglikelihood_rolling ({self.variant})"):
            ids = self.tokenizer(request.args[0], add_special_tokens=False).input_ids
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=ids, prefix_token=prefix, max_seq_len=self.max_length, context_len=1)]
            totals.append(sum(logprob for logprob, _ in self._score_pairs(windows, raise_on_failure=True)))
        return totals

    # --- generation ---------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self._decoder is None:
            raise SpeLLMEvalError(f"variant={self.variant} only scores; generation tasks need variant=spellm or teacher.")
        groups: dict[str, list[int]] = defaultdict(list)
        for index, request in enumerate(requests):
            groups[repr(sorted(request.args[1].items()))].append(index)
        outputs: list[str] = [""] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc=f"generate_until ({self.variant})")
        for indices in groups.values():
            kwargs = requests[indices[0]].args[1]
            until = kwargs.get("until", [])
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                texts = self._decoder.generate([requests[i].args[0] for i in batch], max_new_tokens=max_new,
                                               stop=until).texts
                for i, text in zip(batch, texts):
                    outputs[i] = text
                progress.update(len(batch))
        progress.close()
        return outputs


def _is_ceiling(variant: str) -> bool:
    try:
        return is_ceiling(variant)
    except ValueError:  # teacher_mixture_1
        return False


def _load(checkpoint: str | None, model: str | None, variant: str, cache_dir: str | None):
    """(SpeLLM or None, Teacher or None) from harness arguments."""
    if checkpoint:
        folder = checkpoint_folder(checkpoint)
        if folder is None:
            raise SpeLLMEvalError(f"checkpoint={checkpoint} is not a SpeLLM checkpoint or a training run folder "
                                  f"(no {META_FILE} in it or in its spellm/ subfolder).")
        spellm = SpeLLM.load(folder, cache_dir=cache_dir)
        return spellm, None
    if variant != "teacher" or not model:
        raise SpeLLMEvalError("Give checkpoint=<run or spellm folder>, or variant=teacher with model=<name>.")
    return None, load_teacher(ModelConfig(name=model, cache_dir=cache_dir))
