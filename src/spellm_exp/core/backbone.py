"""The two halves of a CausalLM that a SpeLLM shares with its teacher: the backbone pass, and the teacher's
own output layer on its hidden states."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.cache_utils import StaticCache, StaticLayer, StaticSlidingWindowLayer


def run_backbone(causal_lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
    """(final normed hidden states, KV cache) of a CausalLM's backbone: what both output layers read."""
    backbone = causal_lm.base_model
    # transformers renamed the KV-cache argument and output `past_key_values` -> `cache` (the old name warns on
    # every call and goes in 5.40); releases before the rename only know the old one
    name = _cache_argument(type(backbone))
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=use_cache, **{name: past_key_values})
    return out.last_hidden_state, getattr(out, name)


_CACHE_ARGUMENT: dict[type, str] = {}  # a plain dict, not lru_cache: a compiled decode step traces through it


def _cache_argument(backbone_class: type) -> str:
    if backbone_class not in _CACHE_ARGUMENT:
        takes_cache = "cache" in inspect.signature(backbone_class.forward).parameters
        _CACHE_ARGUMENT[backbone_class] = "cache" if takes_cache else "past_key_values"
    return _CACHE_ARGUMENT[backbone_class]


def teacher_head(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def static_cache(causal_lm: nn.Module, max_len: int):
    """transformers' StaticCache of `max_len` positions, for a decode step captured once (decode.backend=compiled).

    Sliding-window layers become full-length static layers (the sliding-window mask still limits what they
    attend to, so the outputs are the same): transformers' static sliding layer counts its length in a Python int,
    which a compiled step guards on, so it would recompile at every step."""
    cache = StaticCache(config=causal_lm.config, max_cache_len=max_len)
    cache.layers = [StaticLayer(max_len) if isinstance(layer, StaticSlidingWindowLayer) else layer
                    for layer in cache.layers]
    return cache
