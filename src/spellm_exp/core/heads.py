"""The k character heads: k independent linear maps d -> |Sigma|, evaluated as one fused matmul.

One parameter tensor of shape [k, |Sigma|, d] holds the k heads as separate slices: each head
has its own weights (unlike Medusa's list-multiplied heads, which silently shared one module),
and the fused evaluation is a single [k*|Sigma|, d] matmul.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spellm_exp.core.charset import SpellingTable


class CharHeads(nn.Module):
    def __init__(self, k: int, n_symbols: int, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.k, self.n_symbols = k, n_symbols
        self.weight = nn.Parameter(torch.empty(k, n_symbols, hidden_size, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(k, n_symbols, dtype=dtype))
        nn.init.normal_(self.weight, std=hidden_size**-0.5)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> logits [..., k, |Sigma|]."""
        fused = F.linear(hidden, self.weight.flatten(0, 1), self.bias.flatten())
        return fused.unflatten(-1, (self.k, self.n_symbols))

    @torch.no_grad()
    def init_from_unembedding(self, unembedding: torch.Tensor, spelling: SpellingTable) -> None:
        """Row (i, c) := mean of the unembedding rows of the tokens whose i-th symbol is c.

        Symbols that no token has at position i get the mean over all spellable tokens.
        """
        device = unembedding.device  # the teacher may already sit on a GPU; the table lives on the CPU
        rows = unembedding[spelling.spellable.to(device)].to(torch.float32)
        table = spelling.table[spelling.spellable].to(device)
        fallback = rows.mean(dim=0)
        for i in range(self.k):
            sums = torch.zeros(self.n_symbols, rows.shape[1], device=device).index_add_(0, table[:, i], rows)
            counts = torch.bincount(table[:, i], minlength=self.n_symbols).unsqueeze(1)
            means = torch.where(counts > 0, sums / counts.clamp(min=1), fallback)
            self.weight[i].copy_(means.to(self.weight.dtype))
        self.bias.zero_()
