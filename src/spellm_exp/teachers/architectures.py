"""Model architectures written in code: real-size configs for runtime, tiny ones for tests.

Real-size values come from the public config files of each model (see
shared/design/offline-assets.md). Weight values never come from here: a config built
here is either filled from a checkpoint or initialised at random.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

FAMILY_CONFIGS: dict[str, type[PretrainedConfig]] = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "mistral": MistralConfig,
    "gemma2": Gemma2Config,
    "gemma3": Gemma3TextConfig,
}

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}


def smollm2_135m() -> PretrainedConfig:
    return LlamaConfig(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        head_dim=64, intermediate_size=1536, vocab_size=49_152, tie_word_embeddings=True,
        max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100_000.0},
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def gemma3_270m() -> PretrainedConfig:
    return Gemma3TextConfig(
        hidden_size=640, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
        head_dim=256, intermediate_size=2048, vocab_size=262_144, tie_word_embeddings=True,
        max_position_embeddings=32_768, sliding_window=512, query_pre_attn_scalar=256,
        rms_norm_eps=1e-6,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )


def _llama3(hidden: int, layers: int, head_dim: int, ffn: int, tied: bool, rope_factor: float) -> PretrainedConfig:
    return LlamaConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
        head_dim=head_dim, intermediate_size=ffn, vocab_size=128_256, tie_word_embeddings=tied,
        max_position_embeddings=131_072, rms_norm_eps=1e-5,
        rope_parameters={**_LLAMA3_ROPE, "rope_theta": 500_000.0, "factor": rope_factor},
        bos_token_id=128_000, eos_token_id=128_001,
    )


def llama32_1b() -> PretrainedConfig:
    return _llama3(hidden=2048, layers=16, head_dim=64, ffn=8192, tied=True, rope_factor=32.0)


def llama31_8b() -> PretrainedConfig:
    return _llama3(hidden=4096, layers=32, head_dim=128, ffn=14_336, tied=False, rope_factor=8.0)


def qwen25_05b() -> PretrainedConfig:
    return Qwen2Config(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151_936, tie_word_embeddings=True,
        max_position_embeddings=32_768, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=151_643, eos_token_id=151_643,
    )


def mistral_7b() -> PretrainedConfig:
    return MistralConfig(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=14_336, vocab_size=32_000, tie_word_embeddings=False,
        max_position_embeddings=32_768, rms_norm_eps=1e-5, sliding_window=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        bos_token_id=1, eos_token_id=2,
    )


def gemma2_2b() -> PretrainedConfig:
    return Gemma2Config(
        hidden_size=2304, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
        head_dim=256, intermediate_size=9216, vocab_size=256_000, tie_word_embeddings=True,
        max_position_embeddings=8192, sliding_window=4096, query_pre_attn_scalar=256,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )


REAL_SIZE: dict[str, Callable[[], PretrainedConfig]] = {
    "smollm2_135m": smollm2_135m,
    "gemma3_270m": gemma3_270m,
    "llama32_1b": llama32_1b,
    "llama31_8b": llama31_8b,
    "qwen25_05b": qwen25_05b,
    "mistral_7b": mistral_7b,
    "gemma2_2b": gemma2_2b,
}


def tiny_config(family: str, vocab_size: int, tied: bool, special_ids: dict[str, int | None]
                ) -> PretrainedConfig:
    """A 2-layer, 64-wide model of `family` (litgpt-style tiny config for tests)."""
    common = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, vocab_size=vocab_size, tie_word_embeddings=tied,
        max_position_embeddings=1024, **special_ids,
    )
    if family == "gemma3":
        # one sliding and one full layer, so both attention paths are exercised
        return Gemma3TextConfig(**common, sliding_window=16, query_pre_attn_scalar=16,
                                layer_types=["sliding_attention", "full_attention"])
    if family == "mistral":
        return MistralConfig(**common, sliding_window=16)
    return FAMILY_CONFIGS[family](**common)


def meta_model(config: PretrainedConfig) -> PreTrainedModel:
    """The model of `config` on the meta device: its shapes and parameter counts, and no memory."""
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
