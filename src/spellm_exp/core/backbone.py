"""The two halves of a CausalLM that a SpeLLM shares with its teacher: the backbone pass, and the teacher's
own output layer on its hidden states."""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
from torch import nn


def run_backbone(causal_lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
    """(final normed hidden states, KV cache) of a CausalLM's backbone: what both output layers read."""
    backbone = causal_lm.base_model
    # transformers renamed the KV-cache argument and output `past_key_values` -> `cache` (the old name warns on
    # every call and goes in 5.40); releases before the rename only know the old one
    name = "cache" if _takes_cache(type(backbone)) else "past_key_values"
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=use_cache, **{name: past_key_values})
    return out.last_hidden_state, getattr(out, name)


@lru_cache(maxsize=None)
def _takes_cache(backbone_class: type) -> bool:
    return "cache" in inspect.signature(backbone_class.forward).parameters


def teacher_head(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
