"""What each model name means (the registry), and the typed config that selects one."""

from __future__ import annotations

from dataclasses import dataclass

from spellm_exp.teachers.gguf_cache import GgufCheckpoint
from spellm_exp.teachers.tokenizers import GEMMA3_270M_GGUF, SMOLLM2_GGUF


@dataclass(frozen=True)
class ModelSpec:
    family: str
    description: str
    hub_id: str | None = None  # the real checkpoint, for users with a hub
    gguf: GgufCheckpoint | None = None  # real pretrained weights shipped in a package
    architecture: str | None = None  # key of architectures.REAL_SIZE, for init=random
    tokenizer: str | None = None  # offline tokenizer for tiny and random-init models
    tiny: bool = False
    tied: bool = True  # tiny models only; real ones say it in their config


MODELS: dict[str, ModelSpec] = {
    "llama": ModelSpec("llama", "SmolLM2-135M-Instruct", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                       gguf=SMOLLM2_GGUF, architecture="smollm2_135m", tokenizer="smollm2"),
    "gemma": ModelSpec("gemma3", "Gemma-3-270M (base)", hub_id="google/gemma-3-270m",
                       gguf=GEMMA3_270M_GGUF, architecture="gemma3_270m", tokenizer="gemma3"),
    "qwen": ModelSpec("qwen2", "Qwen2.5-0.5B", hub_id="Qwen/Qwen2.5-0.5B",
                      architecture="qwen25_05b", tokenizer="gpt-neox"),
    "mistral": ModelSpec("mistral", "Mistral-7B-v0.1", hub_id="mistralai/Mistral-7B-v0.1",
                         architecture="mistral_7b", tokenizer="gpt-neox"),
    "llama32_1b": ModelSpec("llama", "Llama-3.2-1B", hub_id="meta-llama/Llama-3.2-1B",
                            architecture="llama32_1b", tokenizer="smollm2"),
    "llama31_8b": ModelSpec("llama", "Llama-3.1-8B", hub_id="meta-llama/Llama-3.1-8B",
                            architecture="llama31_8b", tokenizer="smollm2"),
    "gemma2_2b": ModelSpec("gemma2", "Gemma-2-2B", hub_id="google/gemma-2-2b",
                           architecture="gemma2_2b", tokenizer="gemma3"),
    "tiny_llama": ModelSpec("llama", "tiny Llama (2 layers, d=64)", tokenizer="smollm2", tiny=True),
    "tiny_qwen": ModelSpec("qwen2", "tiny Qwen2 (2 layers, d=64)", tokenizer="gpt-neox", tiny=True),
    "tiny_mistral": ModelSpec("mistral", "tiny Mistral (2 layers, d=64, untied)",
                              tokenizer="gemma3", tiny=True, tied=False),
    "tiny_gemma": ModelSpec("gemma3", "tiny Gemma-3 (2 layers, d=64)", tokenizer="gemma3", tiny=True),
}

TINY_MODELS = tuple(name for name, spec in MODELS.items() if spec.tiny)
