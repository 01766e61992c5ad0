"""The tokens a position has already seen, scored exactly by a shortlist (`heads.context_tokens`).

A SpeLLM keeps the teacher's BPE input, so at every position it knows which tokens its input holds so far. Rare
tokens that the text repeats (a name, a science term copied from a passage, LAMBADA's last word) are where
the shortlist's rest spells worst, yet the teacher's logit for such a token is one dot product with its
unembedding row, which a tied model keeps anyway as its input embedding. `TokenContext` holds, per sequence, the
distinct eligible tokens of its input (spellable, and no shortlist token spells the same string) with their
rows, and for each position which of them it has seen; the shortlist adds their exact logits to its softmax.

Positions come in G groups of P consecutive positions (a training batch: G sequences of P tokens; a scored
request: one group; a decode step: one position per row), so the logits are one batched matmul per group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TokenContext:
    ids: torch.Tensor  # [G, m]: each group's distinct eligible tokens (padding slots are never visible)
    strings: torch.Tensor  # [G, m, k]: their spellings
    rows: torch.Tensor  # [G, m, d]: their unembedding rows
    visible: torch.Tensor  # [G, P, m] bool: the token is in the position's input so far

    @property
    def positions(self) -> int:
        return self.visible.shape[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[G * P, m]: u_t . h of each visible token at each position of hidden [G * P, d]; -inf elsewhere."""
        groups, positions, _ = self.visible.shape
        scores = torch.bmm(hidden.reshape(groups, positions, -1), self.rows.to(hidden.dtype).transpose(1, 2))
        return scores.float().masked_fill(~self.visible, -math.inf).flatten(0, 1)

    def select(self, positions: torch.Tensor | slice) -> TokenContext:
        """The same tokens, for a subset of each group's positions (a request's continuation)."""
        return TokenContext(self.ids, self.strings, self.rows, self.visible[:, positions])

    def per_position(self, values: torch.Tensor) -> torch.Tensor:
        """[G, m, ...] -> [G * P, m, ...]: each position's copy of its group's values."""
        return values if self.positions == 1 else values.repeat_interleave(self.positions, dim=0)


def token_context(ids: torch.Tensor, eligible: torch.Tensor, table: torch.Tensor, unembedding: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> TokenContext:
    """The context of each position of ids [G, P]: the eligible tokens (eligible: [|V|] bool) among ids[g, :p + 1]
    (real positions only, where attention_mask [G, P] is 1), with their spellings (table [|V|, k]) and their rows
    of `unembedding` [|V|, d]."""
    groups, positions = ids.shape
    real = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    keep = real & eligible.to(ids.device)[ids.clamp(0, eligible.shape[0] - 1)] & (ids < eligible.shape[0])
    per_group = []
    for g in range(groups):
        where = torch.nonzero(keep[g]).flatten()
        tokens, inverse = torch.unique(ids[g, where], return_inverse=True)
        first = torch.full((tokens.shape[0],), positions, dtype=torch.long, device=ids.device)
        per_group.append((tokens, first.scatter_reduce(0, inverse, where, reduce="amin")))
    width = max(1, max(tokens.shape[0] for tokens, _ in per_group))
    token_ids = ids.new_zeros(groups, width)
    first_seen = torch.full((groups, width), positions, dtype=torch.long, device=ids.device)  # never: padding
    for g, (tokens, first) in enumerate(per_group):
        token_ids[g, : tokens.shape[0]], first_seen[g, : tokens.shape[0]] = tokens, first
    steps = torch.arange(positions, device=ids.device)
    visible = first_seen.unsqueeze(1) <= steps.view(1, -1, 1)  # [G, P, m]
    return TokenContext(token_ids, table[token_ids.to(table.device)].to(ids.device),
                        unembedding[token_ids.to(unembedding.device)].detach(), visible)


class SeenTokens:
    """A decode loop's seen tokens, in buffers whose shapes never change, so a compiled step can replay them.

    `load` puts each row's distinct eligible prompt tokens in the first slots (the rest invisible padding); each
    head step then writes the id it feeds into the next slot (`add`), visible where that id is eligible and no
    visible slot of its row holds it yet (a first occurrence: no token counts twice in the softmax). `context()`
    is the TokenContext of each row's next position, a view of the buffers (G = rows, P = 1). A step costs one
    slot write and an m x d matmul, with no `unique` over the history. The buffers are allocated once and
    refilled in place, so their addresses stay fixed for a captured graph.
    """

    def __init__(self, rows: int, capacity: int, eligible: torch.Tensor, table: torch.Tensor,
                 unembedding: torch.Tensor):
        device = unembedding.device
        self.eligible, self.table, self.unembedding = eligible.to(device), table.to(device), unembedding
        self.ids = torch.zeros(rows, capacity, dtype=torch.long, device=device)
        self.strings = torch.zeros(rows, capacity, table.shape[-1], dtype=table.dtype, device=device)
        self.rows = torch.zeros(rows, capacity, unembedding.shape[-1], dtype=unembedding.dtype, device=device)
        self.visible = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # the next free slot: a tensor, no recompiles

    @property
    def capacity(self) -> int:
        return self.ids.shape[1]

    def buffers(self) -> tuple[torch.Tensor, ...]:
        return self.ids, self.strings, self.rows, self.visible, self.slot

    def load(self, prompt: TokenContext) -> SeenTokens:
        """Start from the prompts' tokens (`token_context` of the prompts: its last position has seen them all)."""
        rows, width = prompt.ids.shape
        if rows != self.ids.shape[0] or width > self.capacity:
            raise ValueError(f"SeenTokens holds {self.ids.shape[0]} rows of {self.capacity} slots, not {rows} rows "
                             f"with {width} distinct prompt tokens.")
        for buffer in self.buffers():
            buffer.zero_()
        self.ids[:, :width], self.strings[:, :width] = prompt.ids, prompt.strings
        self.rows[:, :width] = prompt.rows.to(self.rows.device)
        self.visible[:, :width] = prompt.visible[:, -1]
        self.slot.fill_(width)
        return self

    def context(self) -> TokenContext:
        return TokenContext(self.ids, self.strings, self.rows, self.visible.unsqueeze(1))

    def add(self, ids: torch.Tensor) -> None:
        """Each row's next input id (ids [rows]) is seen from the next step on; at most `capacity` minus the
        prompt's tokens calls after a `load`."""
        inside = ids < self.eligible.shape[0]
        safe = torch.where(inside, ids, 0)
        repeated = ((self.ids == safe.unsqueeze(1)) & self.visible).any(1)
        new = inside & self.eligible[safe] & ~repeated
        self.ids.index_copy_(1, self.slot, safe.unsqueeze(1))
        self.strings.index_copy_(1, self.slot, self.table[safe].unsqueeze(1))
        self.rows.index_copy_(1, self.slot, self.unembedding[safe].to(self.rows.dtype).unsqueeze(1))
        self.visible.index_copy_(1, self.slot, new.unsqueeze(1))
        self.slot += 1
