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
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = {"n_blocks": n_blocks, "block_size": block_size, "hidden_size": hidden_size, "dtype": "float32",
                "key": key}
        meta_path = self.folder / META_FILE
        fresh = not meta_path.exists() or json.loads(meta_path.read_text()) != json.loads(json.dumps(meta))
        mode = "w+" if fresh else "r+"
        shape = (n_blocks, block_size, hidden_size)
        self._features = np.memmap(self.folder / FEATURES_FILE, dtype=np.float32, mode=mode, shape=shape)
        self._filled = np.memmap(self.folder / FILLED_FILE, dtype=np.uint8, mode=mode, shape=(n_blocks,))
        if fresh:
            meta_path.write_text(json.dumps(meta, indent=2))
            log.info("feature cache: new store %s (%d blocks)", self.folder, n_blocks)
        else:
            log.info("feature cache: %s holds %d of %d blocks", self.folder, self.n_filled, n_blocks)

    @property
    def n_filled(self) -> int:
        return int(self._filled.sum())

    def get(self, index: torch.Tensor, ids: torch.Tensor,
            compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Hidden states [B, T, d] of blocks `index` ([B]); `compute(ids[missing])` fills the missing ones."""
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
