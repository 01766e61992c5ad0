"""The two halves of a CausalLM that a SpeLLM shares with its teacher: the backbone pass, and the teacher's
own output layer on its hidden states."""

from __future__ import annotations

import torch
from torch import nn


def run_backbone(causal_lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, past_key_values=None, use_cache: bool = False):
    """(final normed hidden states, KV cache) of a CausalLM's backbone: what both output layers read."""
    out = causal_lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache)
    return out.last_hidden_state, out.past_key_values


def teacher_head(causal_lm: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = causal_lm.get_output_embeddings()(hidden)
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
