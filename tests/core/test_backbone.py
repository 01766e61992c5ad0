"""The backbone pass under either name of transformers' KV-cache argument."""

import warnings
from types import SimpleNamespace

import torch
from torch import nn

from spellm_exp.core.backbone import run_backbone


class _OldBackbone(nn.Module):
    """A transformers release before the `cache` rename: only `past_key_values`, in and out."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        grown = (past_key_values or 0) + input_ids.shape[1]
        return SimpleNamespace(last_hidden_state=input_ids.float(), past_key_values=grown if use_cache else None)


def test_older_transformers_get_past_key_values():
    causal_lm = SimpleNamespace(base_model=_OldBackbone())
    hidden, cache = run_backbone(causal_lm, torch.ones(1, 3, dtype=torch.long), use_cache=True)
    assert hidden.shape == (1, 3)
    assert run_backbone(causal_lm, torch.ones(1, 2, dtype=torch.long), past_key_values=cache, use_cache=True)[1] == 5


def test_current_transformers_decode_without_deprecation_warnings(tiny_teacher):
    model = tiny_teacher("tiny_llama").model
    ids = torch.tensor([[1, 2, 3, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old argument name warns on every call in transformers >= 5.2x
        full, _ = run_backbone(model, ids)
        first, cache = run_backbone(model, ids[:, :3], use_cache=True)
        step, cache = run_backbone(model, ids[:, 3:], position_ids=torch.tensor([[3]]), past_key_values=cache,
                                   use_cache=True)
    assert cache.get_seq_length() == 4
    torch.testing.assert_close(step[0, 0], full[0, 3], atol=1e-5, rtol=1e-4)
