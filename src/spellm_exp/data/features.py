"""Backbone features of the packed blocks, cached on disk for heads-only distillation.

In `train.trainable=heads` the backbone is frozen, so a block's final normed hidden states are the
same in every run that uses the same teacher and blocks: the heads' inputs and, through the
teacher's own output layer, its targets. A sweep over k and alphabets distils many SpeLLMs from
one teacher on the same batches; with the cache, only the first run pays for the backbone.

The store is one memory-mapped fp32 array [n_blocks, block_size, d] plus a byte per block that
says it is filled. Blocks are filled lazily, batch by batch, so a run computes only the blocks it
visits, and a later run with the same data order reads them all. The folder is named after
everything that changes the features (teacher weights, tokenizer, blocks); a file whose shape
does not match is rebuilt.

Several processes may share one store (the ranks of a DDP run fill disjoint blocks of it), so
opening is separate from construction: `open_in_turn` lets one process create the files while
the others wait, then opens them everywhere.

`TargetStore` keeps, beside the features, the teacher's targets computed from them (see its docstring):
with both, a heads-only step reads everything it needs from disk and only the heads run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spellm_exp.core.losses import Targets

log = logging.getLogger(__name__)

FEATURES_FILE, FILLED_FILE, META_FILE = "features.f32", "filled.u8", "meta.json"
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.int32): "i32", np.dtype(np.uint8): "u8"}


def feature_key(key: dict) -> str:
    """A short digest of what the features depend on (the teacher's config, the blocks' key)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class BlockStore:
    """Disk-backed arrays with one row per block ({name: (per-block shape, dtype)}), filled lazily."""

    def __init__(self, folder: str | Path, n_blocks: int, fields: dict[str, tuple[tuple[int, ...], np.dtype]],
                 meta: dict):
        self.folder = Path(folder)
        self.n_blocks = n_blocks
        self.fields = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in fields.items()}
        self.meta = meta
        self._arrays: dict[str, np.memmap] | None = None
        self._filled: np.memmap | None = None

    def open(self) -> BlockStore:
        """Map the files, creating them (empty) when missing or made for other blocks or another teacher."""
        if self._arrays is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / META_FILE
        fresh = not meta_path.exists() or json.loads(meta_path.read_text()) != json.loads(json.dumps(self.meta))
        mode = "w+" if fresh else "r+"
        if fresh:
            meta_path.unlink(missing_ok=True)  # a store whose meta names it is complete, so meta goes last
        self._arrays = {name: np.memmap(self.folder / f"{name}.{_SUFFIX[dtype]}", dtype=dtype, mode=mode,
                                        shape=(self.n_blocks, *shape))
                        for name, (shape, dtype) in self.fields.items()}
        self._filled = np.memmap(self.folder / FILLED_FILE, dtype=np.uint8, mode=mode, shape=(self.n_blocks,))
        if fresh:
            meta_path.write_text(json.dumps(self.meta, indent=2))
            log.info("block cache: new store %s (%d blocks)", self.folder, self.n_blocks)
        else:
            log.info("block cache: %s holds %d of %d blocks", self.folder, self.n_filled, self.n_blocks)
        return self

    def open_in_turn(self, global_rank: int, local_rank: int, barrier: Callable[[], None]) -> BlockStore:
        """Open from every process of a run: global rank 0 first (it may create the files), then the first
        process of each other node (a node-local cache folder), then the rest; `barrier` separates the turns."""
        for turn in (global_rank == 0, global_rank != 0 and local_rank == 0, local_rank != 0):
            if turn:
                self.open()
            barrier()
        return self

    @property
    def n_filled(self) -> int:
        return int(self.open()._filled.sum())

    def get_arrays(self, index: torch.Tensor, inputs: torch.Tensor,
                   compute: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The fields of blocks `index` ([B]) as tensors [B, ...] on `inputs`' device; `compute(inputs[missing])`
        gives the missing blocks' fields ({name: [b, ...]})."""
        self.open()
        rows = index.cpu().numpy()
        missing = self._filled[rows] == 0
        if missing.any():
            computed = compute(inputs[torch.from_numpy(missing).to(inputs.device)])
            # filled flags after the arrays: an interrupted write leaves the block unfilled
            for name, array in self._arrays.items():
                array[rows[missing]] = computed[name].detach().cpu().numpy().astype(array.dtype)
                array.flush()
            self._filled[rows[missing]] = 1
            self._filled.flush()
        return {name: torch.from_numpy(np.ascontiguousarray(array[rows])).to(inputs.device)
                for name, array in self._arrays.items()}


class FeatureStore(BlockStore):
    """Lazily filled, disk-backed final hidden states of a frozen backbone, one row per block."""

    def __init__(self, folder: str | Path, n_blocks: int, block_size: int, hidden_size: int, key: dict):
        meta = {"n_blocks": n_blocks, "block_size": block_size, "hidden_size": hidden_size, "dtype": "float32",
                "key": key}
        super().__init__(folder, n_blocks, {"features": ((block_size, hidden_size), np.float32)}, meta)

    def get(self, index: torch.Tensor, ids: torch.Tensor,
            compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Hidden states [B, T, d] of blocks `index` ([B]); `compute(ids[missing])` fills the missing ones."""
        return self.get_arrays(index, ids, lambda missing: {"features": compute(missing).float()})["features"]


class TargetStore(BlockStore):
    """The teacher's distillation targets (`core.losses.Targets`) of each block, read back instead of recomputed.

    In heads-only runs the targets are a function of the cached hidden states, the spelling table and the loss
    settings, so a long run over a few thousand blocks pays the teacher's |V| x d output layer (and the
    marginals, top-K and entropy over |V|) once per block, not once per visit. The tail tokens of the token
    objective are drawn once per position and then reused (each draw is still an unbiased estimate).
    """

    def __init__(self, folder: str | Path, n_blocks: int, block_size: int, k: int, n_symbols: int,
                 top_k: int, tail_samples: int, key: dict, exact_rest: bool = False):
        fields = {"marginals": ((block_size, k, n_symbols), np.float32), "dropped_mass": ((block_size,), np.float32),
                  "valid": ((block_size,), np.uint8), "entropy": ((block_size,), np.float32)}
        if top_k > 0:
            fields |= {"top_ids": ((block_size, top_k), np.int32), "top_probs": ((block_size, top_k), np.float32)}
        if top_k > 0 and tail_samples > 0:  # (a file cannot map zero bytes: no tail, no tail fields)
            fields |= {"tail_ids": ((block_size, tail_samples), np.int32), "tail_mass": ((block_size,), np.float32)}
        if exact_rest:  # loss.exact_rest: the shortlist's rest tokens' own marginals and mass
            fields |= {"rest_marginals": ((block_size, k, n_symbols), np.float32), "rest_mass": ((block_size,), np.float32)}
        meta = {"n_blocks": n_blocks, "fields": {name: [list(shape), np.dtype(dtype).name]
                                                 for name, (shape, dtype) in fields.items()}, "key": key}
        super().__init__(folder, n_blocks, fields, meta)

    def get(self, index: torch.Tensor, hidden: torch.Tensor, compute: Callable[[torch.Tensor], Targets]) -> Targets:
        """Targets of the B * T positions of blocks `index` ([B]), flattened as `hidden` [B, T, d] is;
        `compute(hidden rows [N, d])` gives the targets of the missing blocks' positions."""

        def compute_blocks(missing: torch.Tensor) -> dict[str, torch.Tensor]:
            targets = compute(missing.flatten(0, 1))
            return {name: getattr(targets, name).unflatten(0, missing.shape[:2]) for name in self.fields}

        arrays = self.get_arrays(index, hidden, compute_blocks)
        fields = {name: value.flatten(0, 1) for name, value in arrays.items()}
        fields["valid"] = fields["valid"].bool()
        for name in ("top_ids", "tail_ids"):
            if name in fields:
                fields[name] = fields[name].long()
        if "top_ids" in fields and "tail_ids" not in fields:  # as `_add_top_and_tail` gives them without a tail
            fields["tail_ids"], fields["tail_mass"] = fields["top_ids"][:, :0], torch.zeros_like(fields["entropy"])
        return Targets(**fields)
