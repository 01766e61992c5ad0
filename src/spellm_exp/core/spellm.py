"""SpeLLM = a teacher's backbone + k character heads on its final normed hidden state.

The teacher's own head (unembedding, plus any final soft-capping) stays in place and can run
on the same backbone pass, which distillation needs. Neither the unembedding nor a tied input
embedding is modified: the heads only read them at init.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spellm_exp.config import HeadInit, HeadKind, HeadsConfig, ModelConfig
from spellm_exp.core.backbone import run_backbone, teacher_head
from spellm_exp.core.ceilings import (
    SHORTLIST_SOURCES,
    TEACHER_MARGINALS,
    TEACHER_SHORTLIST_WEIGHTS,
    is_ceiling,
    mixture_components,
    teacher_marginals,
    teacher_mixture,
    teacher_shortlist,
)
from spellm_exp.core.charset import (
    Alphabet,
    SpellingError,
    SpellingTable,
    TokenSpellings,
)
from spellm_exp.core.context import SeenTokens, TokenContext, token_context
from spellm_exp.core.heads import (
    OutputHeads,
    Shortlist,
    ShortlistHeads,
    StringDistribution,
    build_heads,
    settings_dict,
)
from spellm_exp.core.losses import spelling_matrix
from spellm_exp.core.scoring import score_requests
from spellm_exp.errors import SpellmError
from spellm_exp.teachers import Teacher, load_teacher

FORMAT_VERSION = 2  # 2: the head type (`heads`); a format-1 checkpoint holds linear heads
META_FILE, HEADS_FILE, BACKBONE_FILE = "spellm.json", "heads.safetensors", "backbone.safetensors"
LORA_FOLDER = "lora"


class CheckpointError(SpellmError, ValueError):
    """A SpeLLM checkpoint that does not fit the teacher, tokenizer or alphabet it is loaded with."""


@dataclass
class SpeLLMOutput:
    strings: StringDistribution  # over Sigma^k, at each of batch x time positions (flattened)
    teacher_logits: torch.Tensor | None  # [batch, time, |V|], when asked for
    hidden: torch.Tensor  # [batch, time, d], the final normed hidden state
    past_key_values: object | None


class SpeLLM(nn.Module):
    def __init__(self, teacher: Teacher, spelling: SpellingTable, heads: OutputHeads):
        super().__init__()
        self.causal_lm = teacher.model
        self.heads = heads
        heads.attach_spelling(spelling)
        self.tokenizer, self.info, self.spelling = teacher.tokenizer, teacher.info, spelling
        self.teacher_config = teacher.config
        # device copies of the table, for the loss, scoring and decoding (spelling.* stay on the CPU)
        self.register_buffer("spelling_table", spelling.table, persistent=False)
        self.register_buffer("spellable", spelling.spellable, persistent=False)
        self._marginal_matrix: torch.Tensor | None = None  # built on first use of a ceiling
        self._context_eligible: tuple[tuple, torch.Tensor] | None = None  # (shortlist version, [|V|] bool)

    @classmethod
    def build(cls, teacher: Teacher, alphabet: Alphabet, k: int, init: HeadInit | str = HeadInit.unembedding_mean,
              seed: int = 0, heads: HeadsConfig | None = None, counts: torch.Tensor | None = None) -> SpeLLM:
        """A SpeLLM with new heads of type `heads` (default: the paper's linear heads); `counts` ([|V|] token counts
        of the distillation text) choose what a type keeps of the vocabulary (the shortlist's tokens)."""
        spelling = _pad_table(SpellingTable(TokenSpellings.from_tokenizer(teacher.tokenizer), alphabet, k),
                              teacher.info.vocab_size)
        unembedding = teacher.model.get_output_embeddings().weight
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head_module = build_heads(heads or HeadsConfig(), k, alphabet.size, unembedding.shape[1],
                                      dtype=unembedding.dtype)
            head_module.fit_vocabulary(spelling, counts)
            if HeadInit(init) is HeadInit.unembedding_mean:
                head_module.init_from_unembedding(unembedding.detach(), spelling)
        return cls(teacher, spelling, head_module)

    @property
    def k(self) -> int:
        return self.heads.k

    @property
    def alphabet(self) -> Alphabet:
        return self.spelling.alphabet

    # --- the forward pass -------------------------------------------------------------------
    def backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
        return run_backbone(self.causal_lm, input_ids, attention_mask, position_ids, past_key_values, use_cache)

    def teacher_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The teacher's own output layer, exactly as its CausalLM applies it."""
        return teacher_head(self.causal_lm, hidden)

    @property
    def uses_context(self) -> bool:
        """Whether the heads score the tokens each position has seen (heads.context_tokens)."""
        return bool(getattr(self.heads, "context_tokens", False))

    def token_context(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> TokenContext | None:
        """The seen tokens of each position of ids [G, P] (core.context), for heads that score them; else None."""
        if not self.uses_context:
            return None
        return token_context(ids, self._eligible_for_context(), self.spelling_table,
                             self.causal_lm.get_output_embeddings().weight, attention_mask)

    def seen_tokens(self, rows: int, capacity: int) -> SeenTokens:
        """Empty buffers for a decode loop's seen tokens (core.context.SeenTokens): `rows` rows of `capacity` slots,
        for the distinct prompt tokens and every id fed after them."""
        return SeenTokens(rows, capacity, self._eligible_for_context(), self.spelling_table,
                          self.causal_lm.get_output_embeddings().weight)

    def _eligible_for_context(self) -> torch.Tensor:
        """[|V|] bool (ShortlistHeads.context_eligible), kept until the shortlist's strings change."""
        key = (self.heads.strings.data_ptr(), self.heads.strings._version, self.spelling_table.device)
        if self._context_eligible is None or self._context_eligible[0] != key:
            self._context_eligible = (key, self.heads.context_eligible(self.spelling_table, self.spellable))
        return self._context_eligible[1]

    def strings(self, hidden: torch.Tensor, source: str = "heads", context: TokenContext | None = None
                ) -> StringDistribution:
        """The distribution over Sigma^k at each position of hidden [n, d]: the heads' own (`heads`), or a
        ceiling built from the teacher's distribution (core.ceilings: `teacher_marginals`, the perfect
        independent heads; `teacher_mixture_M`; for shortlist heads `teacher_shortlist` and the hybrid
        `teacher_shortlist_weights`), which measures what a head type could reach at best. `context`: the seen
        tokens of hidden's positions (token_context), for heads that score them."""
        if source == "heads":
            return self.heads(hidden, context) if self.uses_context else self.heads(hidden)
        if not is_ceiling(source):
            raise ValueError(f"source={source} is unknown; use heads, {TEACHER_MARGINALS}, teacher_mixture_M or "
                             f"(shortlist heads) {' or '.join(SHORTLIST_SOURCES)}.")
        if source in SHORTLIST_SOURCES and not isinstance(self.heads, ShortlistHeads):
            raise ValueError(f"source={source} needs a SpeLLM with shortlist heads (heads=shortlist); this one has "
                             f"{self.heads.kind.value} heads.")
        if self._marginal_matrix is None:
            self._marginal_matrix = spelling_matrix(self.spelling_table, self.alphabet.size)
        args = (self.teacher_logits(hidden), self.spelling_table, self.spellable, self.alphabet.size)
        if source == TEACHER_MARGINALS:
            return teacher_marginals(*args, matrix=self._marginal_matrix)
        components = mixture_components(source)
        if components is not None:
            return teacher_mixture(*args, components, matrix=self._marginal_matrix)
        ceiling = teacher_shortlist(*args, self.heads, matrix=self._marginal_matrix, context=context)
        if source == TEACHER_SHORTLIST_WEIGHTS:  # the teacher's weights, the trained heads' rest spelling
            rest = self.strings(hidden, "heads", context).rest
            return Shortlist(self.heads, ceiling.log_weights, rest, ceiling.context)
        return ceiling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_teacher_logits: bool = False, **backbone_kwargs) -> SpeLLMOutput:
        hidden, past = self.backbone(input_ids, attention_mask, **backbone_kwargs)
        teacher = self.teacher_logits(hidden) if return_teacher_logits else None
        context = self.token_context(input_ids, attention_mask)
        return SpeLLMOutput(self.strings(hidden.flatten(0, -2), context=context), teacher, hidden, past)

    def score(self, context: str, continuation: str, mode: str = "product"):
        """log p_S(continuation | context) and is_greedy (see scoring.py)."""
        return score_requests(self, [(context, continuation)], mode=mode)[0]

    # --- save / load ------------------------------------------------------------------------
    def save(self, folder: str | Path, backbone_trained: bool = False, peft_model=None) -> Path:
        """Heads, alphabet, spelling-table hash and the teacher reference, plus the backbone when it
        trained: its weights (`backbone_trained`), or only its LoRA adapters (`peft_model`)."""
        folder = Path(folder)
        # clones: packed heads (ShortlistHeads.pack_rows) are views of one matrix, which safetensors refuses
        heads = {name: p.detach().clone(memory_format=torch.contiguous_format)
                 for name, p in self.heads.state_dict().items()}
        check_finite(heads, f"the heads to save into {folder}")
        state = None
        if backbone_trained and peft_model is None:
            state = {name: p.detach().contiguous() for name, p in self.causal_lm.named_parameters()}
            check_finite(state, f"the trained backbone to save into {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        save_file(heads, folder / HEADS_FILE)
        if peft_model is not None:
            peft_model.save_pretrained(folder / LORA_FOLDER)
        elif state is not None:
            save_file(state, folder / BACKBONE_FILE)  # named_parameters lists tied weights once
        meta = {
            "format_version": FORMAT_VERSION,
            "k": self.k,
            "heads": settings_dict(self.heads.settings()),
            "alphabet": self.alphabet.to_json(),
            "spelling_fingerprint": self.spelling.fingerprint(),
            "vocab_size": self.spelling.vocab_size,
            # where the teacher's weights were made is not part of what it is: a checkpoint loads on the CPU
            "teacher": {"config": {**model_config_dict(self.teacher_config), "device": "cpu"},
                        "info": self.info.as_dict()},
            "backbone": "lora" if peft_model is not None else "trained" if backbone_trained else "frozen",
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @torch.no_grad()
    def init_heads_from(self, folder: str | Path) -> list[str]:
        """Copy the head tensors of the SpeLLM checkpoint `folder` whose name and shape match these heads' (its
        buffers too: a shortlist keeps the checkpoint's tokens); returns their names. The checkpoint must spell
        with this SpeLLM's table (same tokenizer, k and alphabet)."""
        folder = Path(folder)
        meta = read_meta(folder)
        if meta["spelling_fingerprint"] != self.spelling.fingerprint():
            raise CheckpointError(
                f"train.init_from={folder}: its spelling table (k={meta['k']}, "
                f"{_describe(Alphabet.from_json(meta['alphabet']))}) is not this run's (k={self.k}, "
                f"{_describe(self.alphabet)}); start from a checkpoint of the same teacher, k and charset.")
        state = self.heads.state_dict()
        tensors = read_tensors(folder / HEADS_FILE)
        copied = [name for name, tensor in tensors.items() if name in state and state[name].shape == tensor.shape]
        if not copied:
            raise CheckpointError(f"train.init_from={folder}: none of its head tensors ({', '.join(tensors)}) "
                                  "matches these heads by name and shape.")
        self.heads.load_state_dict({**state, **{name: tensors[name] for name in copied}})
        return copied

    @classmethod
    def load(cls, folder: str | Path, teacher_config: ModelConfig | None = None,
             alphabet: Alphabet | None = None, cache_dir: str | None = None, heads: HeadsConfig | None = None
             ) -> SpeLLM:
        """Rebuild a saved SpeLLM; `teacher_config` replaces the saved teacher reference. `alphabet` and
        `heads`, when given, must be what the checkpoint holds."""
        folder = Path(folder)
        meta = read_meta(folder)
        saved_alphabet = Alphabet.from_json(meta["alphabet"])
        if alphabet is not None and alphabet != saved_alphabet:
            raise CheckpointError(
                f"The checkpoint's alphabet ({_describe(saved_alphabet)}) differs from the one asked for "
                f"({_describe(alphabet)}); drop the charset override or distil new heads.")
        saved_heads = HeadsConfig(**meta.get("heads", {"kind": HeadKind.linear.value}))  # format 1: linear
        saved_heads.kind = HeadKind(saved_heads.kind)
        if heads is not None and settings_dict(heads) != settings_dict(saved_heads):
            raise CheckpointError(
                f"The checkpoint holds heads {settings_dict(saved_heads)}, not the {settings_dict(heads)} asked "
                f"for; drop the heads override or distil new heads of that type.")
        try:
            config = teacher_config or ModelConfig(**meta["teacher"]["config"])
        except TypeError as err:  # keys no ModelConfig has
            raise CheckpointError(f"{folder / META_FILE}: its teacher.config does not describe a model ({err}); "
                                  "export the checkpoint again or distil new heads.") from None
        if cache_dir is not None:
            config.cache_dir = cache_dir
        teacher = load_teacher(config)
        spelling = _pad_table(SpellingTable(TokenSpellings.from_tokenizer(teacher.tokenizer), saved_alphabet,
                                            meta["k"]), teacher.info.vocab_size)
        if spelling.fingerprint() != meta["spelling_fingerprint"]:
            raise CheckpointError(
                f"The checkpoint's spelling table (k={meta['k']}, {_describe(saved_alphabet)}, "
                f"|V|={meta['vocab_size']:,}, teacher '{meta['teacher']['config']['name']}') does not match "
                f"the tokenizer of teacher '{config.name}' (|V|={spelling.vocab_size:,}). Load it with the "
                f"teacher it was distilled from, or distil new heads for this teacher.")
        tensors = read_tensors(folder / HEADS_FILE)
        head_module = build_heads(saved_heads, meta["k"], saved_alphabet.size, teacher.info.hidden_size,
                                  dtype=next(t.dtype for t in tensors.values() if t.is_floating_point()))
        try:
            head_module.load_state_dict(tensors)
        except RuntimeError as err:  # names or shapes that its own spellm.json does not describe
            raise CheckpointError(f"{folder / HEADS_FILE} does not hold the heads its {META_FILE} describes "
                                  f"({str(err).splitlines()[0]}); export the checkpoint again, or distil "
                                  "new heads.") from err
        if (folder / BACKBONE_FILE).exists():
            teacher.model.load_state_dict(read_tensors(folder / BACKBONE_FILE), strict=False)
        if (folder / LORA_FOLDER).exists():
            from peft import PeftModel

            teacher.model = PeftModel.from_pretrained(teacher.model, folder / LORA_FOLDER).merge_and_unload()
        return cls(teacher, spelling, head_module)


# what every checkpoint's spellm.json holds (format 1 has no `heads`: linear heads)
META_KEYS = ("k", "alphabet", "spelling_fingerprint", "vocab_size", "teacher")


def read_meta(folder: Path) -> dict:
    """The checkpoint's spellm.json, or a CheckpointError that names the file and what to do."""
    path = folder / META_FILE
    fix = "export the checkpoint again (train with the run's overrides and ckpt_path=last) or distil new heads"
    if not path.exists():
        raise CheckpointError(f"{folder} is not a SpeLLM checkpoint: {META_FILE} is missing.")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); {fix}.") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} holds a {type(meta).__name__}, not a checkpoint description; {fix}.")
    missing = [key for key in META_KEYS if key not in meta]
    if "teacher" in meta:
        teacher = meta["teacher"] if isinstance(meta["teacher"], dict) else {}
        missing += [f"teacher.{key}" for key in ("config", "info") if not isinstance(teacher.get(key), dict)]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; {fix}.")
    return meta


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, all finite, or a CheckpointError that names the file and what to do."""
    if not path.exists():
        raise CheckpointError(f"{path} is missing; export the checkpoint again or distil new heads.")
    try:
        tensors = load_file(path)
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError) on a truncated file
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}): truncated or overwritten. "
                              "Export the checkpoint again (train with the run's overrides and ckpt_path=last) "
                              "or distil new heads.") from None
    check_finite(tensors, str(path))
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Diverged weights are never saved or loaded as if they were a result."""
    bad = [name for name, tensor in tensors.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{what}: {len(bad)} tensor(s) hold NaN or infinite weights ({shown}): the training "
                              "that made them diverged. Distil again with a lower train.lr.")


def checkpoint_folder(path: str | Path) -> Path | None:
    """The SpeLLM checkpoint at `path`, or in the `spellm/` subfolder of a training run; None if neither."""
    for candidate in (Path(path) / "spellm", Path(path)):
        if (candidate / META_FILE).exists():
            return candidate
    return None


def _pad_table(spelling: SpellingTable, vocab_size: int) -> SpellingTable:
    """Extend the table to the model's (possibly padded) embedding size: the extra ids never spell."""
    extra = vocab_size - spelling.vocab_size
    if extra == 0:
        return spelling
    if extra < 0:
        raise SpellingError(f"The tokenizer has {spelling.vocab_size:,} ids but the model only {vocab_size:,}.")
    spelling.table = torch.cat([spelling.table, torch.zeros(extra, spelling.k, dtype=torch.long)])
    spelling.lengths = torch.cat([spelling.lengths, torch.zeros(extra, dtype=torch.long)])
    spelling.spellable = spelling.lengths > 0
    return spelling


def model_config_dict(config: ModelConfig) -> dict:
    """A teacher config as plain JSON data."""
    data = asdict(config)
    data["init"] = getattr(data["init"], "value", data["init"])
    return data


def _describe(alphabet: Alphabet) -> str:
    escape = " and the byte escape" if alphabet.escape else ""
    return f"charset {alphabet.kind.value} with {len(alphabet.units)} characters{escape}"
