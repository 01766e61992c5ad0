"""Rank-r factors A [m, r], B [r, d] of a matrix W [m, d], for a shortlist's factored tail (heads.tail_rank) and the
ceiling that measures it (experiments/list_rank.py)."""

from __future__ import annotations

import torch


def truncated(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A B the best rank-r approximation of weight in Frobenius norm (truncated SVD)."""
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(weight.dtype), vh[:rank].to(weight.dtype)


def data_aware(weight: torch.Tensor, second_moment: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) minimising E_h ||W h - A B h||^2 for E[h h^T] = second_moment: the truncated SVD of W S^(1/2), mapped
    back by S^(-1/2). Logits W h of hidden states that favour a few directions (an LLM's do) keep far more than
    with `truncated`."""
    values, vectors = torch.linalg.eigh(second_moment.double())
    values = values.clamp(min=values.max() * 1e-12)
    root = (vectors * values.sqrt()) @ vectors.T
    inverse_root = (vectors * values.rsqrt()) @ vectors.T
    a, b = truncated(weight.double() @ root, rank)
    return a.to(weight.dtype), (b @ inverse_root).to(weight.dtype)
