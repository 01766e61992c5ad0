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
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

FEATURES_FILE, FILLED_FILE, META_FILE = "features.f32", "filled.u8", "meta.json"


def feature_key(key: dict) -> str:
    """A short digest of what the features depend on (the teacher's config, the blocks' key)."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FeatureStore:
    """Lazily filled, disk-backed final hidden states of a frozen backbone, one row per block."""

    def __init__(self, folder: str | Path, n_blocks: int, block_size: int, hidden_size: int, key: dict):
        self.folder = Path(folder)
        self.shape = (n_blocks, block_size, hidden_size)
        self.meta = {"n_blocks": n_blocks, "block_size": block_size, "hidden_size": hidden_size, "dtype": "float32",
                     "key": key}
        self._features: np.memmap | None = None
        self._filled: np.memmap | None = None

    def open(self) -> FeatureStore:
        """Map the files, creating them (empty) when missing or made for other blocks or another teacher."""
        if self._features is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        meta_path = self.folder / META_FILE
        fresh = not meta_path.exists() or json.loads(meta_path.read_text()) != json.loads(json.dumps(self.meta))
        mode = "w+" if fresh else "r+"
        if fresh:
            meta_path.unlink(missing_ok=True)  # a store whose meta names it is complete, so meta goes last
        self._features = np.memmap(self.folder / FEATURES_FILE, dtype=np.float32, mode=mode, shape=self.shape)
        self._filled = np.memmap(self.folder / FILLED_FILE, dtype=np.uint8, mode=mode, shape=(self.shape[0],))
        if fresh:
            meta_path.write_text(json.dumps(self.meta, indent=2))
            log.info("feature cache: new store %s (%d blocks)", self.folder, self.shape[0])
        else:
            log.info("feature cache: %s holds %d of %d blocks", self.folder, self.n_filled, self.shape[0])
        return self

    def open_in_turn(self, global_rank: int, local_rank: int, barrier: Callable[[], None]) -> FeatureStore:
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

    def get(self, index: torch.Tensor, ids: torch.Tensor,
            compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Hidden states [B, T, d] of blocks `index` ([B]); `compute(ids[missing])` fills the missing ones."""
        self.open()
        rows = index.cpu().numpy()
        missing = self._filled[rows] == 0
        if missing.any():
            computed = compute(ids[torch.from_numpy(missing).to(ids.device)])
            # filled flags after the features: an interrupted write leaves the block unfilled
            self._features[rows[missing]] = computed.detach().float().cpu().numpy()
            self._features.flush()
            self._filled[rows[missing]] = 1
            self._filled.flush()
        return torch.from_numpy(np.ascontiguousarray(self._features[rows])).to(ids.device)
