"""Load a teacher by config: validate cheaply first, then build model + tokenizer + info."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import huggingface_hub
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from spellm_exp.config import Init, ModelConfig
from spellm_exp.errors import SpellmError
from spellm_exp.teachers.architectures import REAL_SIZE, tiny_config
from spellm_exp.teachers.gguf_cache import MARKER, converted_model_folder
from spellm_exp.teachers.packages import MissingPackageError
from spellm_exp.teachers.registry import MODELS, ModelSpec
from spellm_exp.teachers.tokenizers import (
    check_offline_tokenizer,
    load_offline_tokenizer,
    truncate_bpe,
)

log = logging.getLogger(__name__)

ORIGIN_PRETRAINED = "pretrained"
ORIGIN_GGUF = "pretrained (dequantised GGUF)"
ORIGIN_RANDOM = "random init"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# auto: transformers' own choice, SDPA where the architecture supports it and eager where not (Gemma-2)
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")
DEFAULT_CACHE = Path.home() / ".cache" / "spellm_exp"
LOCAL = "local"  # the config name for any folder or hub id given by model.path


class TeacherConfigError(SpellmError, ValueError):
    """A model config that cannot load; the message names the fix."""


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    description: str
    family: str
    origin: str  # ORIGIN_PRETRAINED | ORIGIN_GGUF | ORIGIN_RANDOM
    source: str  # package, folder or hub id the weights (or the architecture) came from
    n_params: int
    vocab_size: int
    hidden_size: int
    tied: bool
    tokenizer: str
    dtype: str

    def summary(self) -> str:
        tied = "tied" if self.tied else "untied"
        return (f"{self.name}: {self.description} [{self.family}, {self.n_params / 1e6:.1f}M params, "
                f"|V|={self.vocab_size:,}, d={self.hidden_size}, {tied}, {self.origin}, {self.dtype}] "
                f"from {self.source}; tokenizer: {self.tokenizer}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Teacher:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: TeacherInfo
    config: ModelConfig  # what reloads this teacher (saved with SpeLLM checkpoints)


def _cache_root(cfg: ModelConfig) -> Path:
    return Path(cfg.cache_dir).expanduser() if cfg.cache_dir else DEFAULT_CACHE


def _spec(cfg: ModelConfig) -> ModelSpec:
    if cfg.path:  # a folder or hub id: the name only labels it
        return MODELS.get(cfg.name, ModelSpec(family="", description=cfg.path))
    if cfg.name == LOCAL:
        raise TeacherConfigError("model=local needs the folder or hub id: model.path=<folder or org/name>.")
    if cfg.name not in MODELS:
        raise TeacherConfigError(
            f"Unknown model '{cfg.name}'. Choose one of: {', '.join(MODELS)}; "
            f"or load any local folder or hub id with model.path=<folder or org/name>."
        )
    return MODELS[cfg.name]


def _check_hub_id(repo_id: str, name: str) -> None:
    hint = ("Point at a local copy with model.path=/path/to/folder (a folder with config.json and "
            "weights), or measure runtime only with model.init=random.")
    if huggingface_hub.is_offline_mode():
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, "config.json"), str):
            return
        raise TeacherConfigError(
            f"Model '{name}' needs the hub checkpoint '{repo_id}', but the hub is offline "
            f"(HF_HUB_OFFLINE=1) and no cached copy exists. {hint}")
    try:
        AutoConfig.from_pretrained(repo_id)
    except OSError as err:
        raise TeacherConfigError(f"Cannot reach the hub checkpoint '{repo_id}' ({err}). {hint}") from err


MODEL_FOLDER = ("a model folder holds config.json, the weights (*.safetensors or *.bin) and the tokenizer "
                "(tokenizer.json, or tokenizer.model with tokenizer_config.json), as save_pretrained writes them")


def _looks_like_a_folder(path: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, ~, ./, deeper) can only be a folder."""
    return Path(path).is_absolute() or path.startswith(("~", ".")) or path.count("/") > 1


def _check_path(path: str, name: str) -> None:
    folder = Path(path).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise TeacherConfigError(f"model.path={path} has no config.json; {MODEL_FOLDER}.")
    elif folder.exists() or _looks_like_a_folder(path):
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise TeacherConfigError(f"model.path={path} {what}; give the folder of a model ({MODEL_FOLDER}), or a "
                                 "hub id org/name.")
    else:
        _check_hub_id(path, name)


def check_model_config(cfg: ModelConfig) -> None:
    """Every check that needs no weights: unknown names, missing packages, unreachable hub ids."""
    if cfg.dtype not in DTYPES:
        raise TeacherConfigError(f"model.dtype={cfg.dtype} is not supported; use one of {list(DTYPES)}.")
    if cfg.attn_implementation not in ATTENTION:
        raise TeacherConfigError(f"model.attn_implementation={cfg.attn_implementation} is not one of {list(ATTENTION)}.")
    spec = _spec(cfg)
    try:
        if cfg.path:
            _check_path(cfg.path, cfg.name)
        elif spec.tiny or Init(cfg.init) is Init.random:
            if not spec.tiny and spec.architecture is None:
                raise TeacherConfigError(f"Model '{cfg.name}' has no built-in architecture for model.init=random.")
            check_offline_tokenizer(spec.tokenizer, _cache_root(cfg))
        elif spec.gguf is not None:
            spec.gguf.check_installed()
        else:
            _check_hub_id(spec.hub_id, cfg.name)
    except MissingPackageError as err:
        raise TeacherConfigError(str(err)) from err


def _model_kwargs(cfg: ModelConfig) -> dict:
    """What every model construction takes from the config: weight dtype and attention kernel."""
    attention = None if cfg.attn_implementation == "auto" else cfg.attn_implementation
    return {"dtype": DTYPES[cfg.dtype], "attn_implementation": attention}


def _random_model(config: PretrainedConfig, cfg: ModelConfig) -> PreTrainedModel:
    """The architecture with fresh weights: its modules built on the meta device (no memory, no work), then
    allocated on `cfg.device` in `cfg.dtype` and initialised there by the model's own init rules (which also
    recompute buffers such as the rotary frequencies), so nothing is built twice or copied between devices."""
    device = torch.device(cfg.device)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **_model_kwargs(cfg))
    model.to_empty(device=device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model.init_weights()  # and ties the output layer to the embeddings where the config says so
    return model


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _stand_in_tokenizer(spec: ModelSpec, vocab_size: int, cache: Path) -> tuple[PreTrainedTokenizerBase, str]:
    tokenizer = load_offline_tokenizer(spec.tokenizer, cache)
    if len(tokenizer) > vocab_size:
        return truncate_bpe(tokenizer, vocab_size), f"{spec.tokenizer} (stand-in, truncated to {vocab_size:,})"
    return tokenizer, f"{spec.tokenizer} (stand-in)"


def _folder_origin(folder: Path) -> str:
    marker = folder / MARKER
    return ORIGIN_GGUF if marker.exists() and json.loads(marker.read_text())["content"] == "model" else ORIGIN_PRETRAINED


def _build(cfg: ModelConfig, spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str, str, str]:
    """(model, tokenizer, origin, source, tokenizer label) for a checked config."""
    cache = _cache_root(cfg)
    random_init = Init(cfg.init) is Init.random
    if cfg.path:
        path = str(Path(cfg.path).expanduser()) if Path(cfg.path).expanduser().is_dir() else cfg.path
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            if random_init:
                return _random_model(AutoConfig.from_pretrained(path), cfg), tokenizer, ORIGIN_RANDOM, path, path
            model = AutoModelForCausalLM.from_pretrained(path, **_model_kwargs(cfg))
        except (OSError, ValueError, KeyError) as err:  # what transformers raises for missing or foreign files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TeacherConfigError(f"model.path={cfg.path} does not load ({first}); {MODEL_FOLDER}.") from err
        origin = _folder_origin(Path(path)) if Path(path).is_dir() else ORIGIN_PRETRAINED
        return model, tokenizer, origin, path, path
    if spec.tiny:
        tokenizer = load_offline_tokenizer(spec.tokenizer, cache)
        config = tiny_config(spec.family, len(tokenizer), spec.tied, _special_ids(tokenizer))
        return _random_model(config, cfg), tokenizer, ORIGIN_RANDOM, "tiny config in code", spec.tokenizer
    if random_init:
        config = REAL_SIZE[spec.architecture]()
        tokenizer, label = _stand_in_tokenizer(spec, config.vocab_size, cache)
        return _random_model(config, cfg), tokenizer, ORIGIN_RANDOM, f"architecture {spec.architecture}", label
    if spec.gguf is not None:
        folder = converted_model_folder(spec.gguf, cache)
        model = AutoModelForCausalLM.from_pretrained(folder, **_model_kwargs(cfg))
        return model, AutoTokenizer.from_pretrained(folder), ORIGIN_GGUF, spec.gguf.package.requirement, spec.tokenizer
    model = AutoModelForCausalLM.from_pretrained(spec.hub_id, **_model_kwargs(cfg))
    return model, AutoTokenizer.from_pretrained(spec.hub_id), ORIGIN_PRETRAINED, spec.hub_id, spec.hub_id


def load_teacher(cfg: ModelConfig | None = None, **overrides) -> Teacher:
    """Load the teacher named by `cfg` (or by keyword overrides of the defaults), in eval mode."""
    cfg = cfg if cfg is not None else ModelConfig(**overrides)
    check_model_config(cfg)
    spec = _spec(cfg)
    model, tokenizer, origin, source, tokenizer_label = _build(cfg, spec)
    model.to(cfg.device).eval()  # pretrained weights load on the CPU; random ones are made on the device
    if tokenizer.pad_token is None:  # batching needs one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    embeddings, unembedding = model.get_input_embeddings(), model.get_output_embeddings()
    info = TeacherInfo(
        name=cfg.name,
        description=spec.description,
        family=spec.family or model.config.model_type,
        origin=origin,
        source=source,
        n_params=sum(p.numel() for p in model.parameters()),
        vocab_size=unembedding.weight.shape[0],
        hidden_size=unembedding.weight.shape[1],
        tied=unembedding.weight is embeddings.weight,
        tokenizer=tokenizer_label,
        dtype=cfg.dtype,
    )
    log.info("Loaded teacher %s", info.summary())
    return Teacher(model=model, tokenizer=tokenizer, info=info, config=cfg)


@torch.inference_mode()
def greedy_continuation(teacher: Teacher, prompt: str, max_new_tokens: int) -> str:
    """A sanity check of a loaded teacher: its greedy continuation of `prompt`, through transformers' generate."""
    tokenizer = teacher.tokenizer
    inputs = tokenizer(prompt, return_tensors="pt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = teacher.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
