"""Distillation text -> packed token blocks, as a LightningDataModule.

Documents from the chosen training-split sources are tokenized with the teacher's tokenizer,
joined with EOS, and cut into blocks of `block_size` tokens (each starting with BOS when the
tokenizer uses one). The last `val_blocks` blocks are held out for validation. Tokenized blocks
are cached on disk, keyed by everything that changes them, so a second run starts at once.

The training order is a function of (seed, epoch) and the number of batches already done, so a
run resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.
Under DDP the data module shards its own batches (hence `use_distributed_sampler: false` in the
trainer configs): `data.batch_size` is per device, as in Lightning, and rank r of W takes the
r-th slice of each global batch of W x batch_size blocks, so W ranks see exactly the blocks one
process with a W times larger batch would see.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from spellm_exp.config import DataConfig
from spellm_exp.data.corpus import SOURCES, corpus_texts

log = logging.getLogger(__name__)


def check_data_config(cfg: DataConfig) -> None:
    unknown = [s for s in cfg.sources if s not in SOURCES]
    if unknown or not cfg.sources:
        raise ValueError(f"data.sources={list(cfg.sources)}: choose one or more of {list(SOURCES)}.")
    if cfg.block_size < 2 or cfg.batch_size < 1 or cfg.val_blocks < 1:
        raise ValueError("data.block_size must be >= 2, data.batch_size and data.val_blocks >= 1.")


def _tokenizer_fingerprint(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def pack_blocks(tokenizer, texts: list[str], block_size: int) -> torch.Tensor:
    """Tokenize, join documents with EOS, and cut into [n_blocks, block_size] (BOS first if used)."""
    bos = tokenizer.bos_token_id
    uses_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    body = block_size - 1 if uses_bos else block_size
    stream: list[int] = []
    for start in range(0, len(texts), 512):
        for ids in tokenizer(texts[start:start + 512], add_special_tokens=False)["input_ids"]:
            stream += ids
            stream.append(tokenizer.eos_token_id)
    n_blocks = len(stream) // body
    blocks = torch.tensor(stream[: n_blocks * body], dtype=torch.long).view(n_blocks, body)
    if uses_bos:
        blocks = torch.cat([torch.full((n_blocks, 1), bos, dtype=torch.long), blocks], dim=1)
    return blocks


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order depends only on (seed, epoch); skips the batches already done.

    With `num_replicas` > 1, each global batch holds `num_replicas * batch_size` items and this
    sampler yields slice `rank` of it: the ranks' shards are disjoint and together make the batch.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, batches_done: Callable[[], int],
                 num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of {num_replicas} replicas.")
        if n_items < batch_size * num_replicas:
            raise ValueError(f"{n_items} training blocks are fewer than one global batch (data.batch_size="
                             f"{batch_size} x {num_replicas} devices); lower data.batch_size or use more text.")
        self.n_items, self.batch_size, self.seed, self.batches_done = n_items, batch_size, seed, batches_done
        self.num_replicas, self.rank = num_replicas, rank

    def __len__(self) -> int:
        return self.n_items // (self.batch_size * self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.batches_done(), len(self))
        order = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed + epoch))
        global_batch = self.batch_size * self.num_replicas
        for batch in range(offset, len(self)):
            start = batch * global_batch + self.rank * self.batch_size
            yield order[start:start + self.batch_size].tolist()


class ResumableLoader(DataLoader):
    """The training DataLoader, which tells Lightning that it resumes by itself (Lightning's `_Stateful`): its
    ResumableBatchSampler computes where to go on from the trainer's restored step, so a resumed run sees exactly
    the batches the uninterrupted run would have, and there is no loader state to restore."""

    def state_dict(self) -> dict:
        return {"batches_done": self.batch_sampler.batches_done()}  # a record for the checkpoint's reader

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the sampler reads the trainer's step, which the checkpoint restores."""


class DistillDataModule(LightningDataModule):
    def __init__(self, tokenizer, cfg: DataConfig):
        super().__init__()
        check_data_config(cfg)
        self.tokenizer, self.cfg = tokenizer, cfg
        self.train_blocks: torch.Tensor | None = None
        self.val_blocks: torch.Tensor | None = None

    def blocks_key(self) -> dict:
        """Everything the packed blocks depend on."""
        return {"tokenizer": _tokenizer_fingerprint(self.tokenizer), "sources": list(self.cfg.sources),
                "max_chars_per_source": self.cfg.max_chars_per_source, "block_size": self.cfg.block_size}

    def _cache_path(self) -> Path | None:
        if not self.cfg.cache_dir:
            return None
        digest = hashlib.sha256(json.dumps(self.blocks_key()).encode()).hexdigest()[:16]
        return Path(self.cfg.cache_dir).expanduser() / "blocks" / f"{digest}.pt"

    def blocks(self) -> torch.Tensor:
        """All packed blocks (train then validation), from the cache when possible."""
        path = self._cache_path()
        if path is not None and path.exists():
            return torch.load(path)
        texts = corpus_texts(list(self.cfg.sources), self.cfg.max_chars_per_source)
        blocks = pack_blocks(self.tokenizer, texts, self.cfg.block_size)
        if path is not None:  # atomic, and safe when the ranks of a multi-process run all get here
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".partial-{os.getpid()}")
            torch.save(blocks, tmp)
            tmp.replace(path)
        return blocks

    def setup(self, stage: str | None = None) -> None:
        if self.train_blocks is not None:
            return
        blocks = self.blocks()
        if len(blocks) <= self.cfg.val_blocks + self.cfg.batch_size:
            raise ValueError(f"The corpus gives {len(blocks)} blocks of {self.cfg.block_size} tokens: too few for "
                             f"data.val_blocks={self.cfg.val_blocks} plus one batch; use more text.")
        self.train_blocks, self.val_blocks = blocks[: -self.cfg.val_blocks], blocks[-self.cfg.val_blocks:]
        log.info("data: %d train and %d validation blocks of %d tokens", len(self.train_blocks),
                 len(self.val_blocks), self.cfg.block_size)

    def train_token_counts(self) -> torch.Tensor:
        """Token frequencies of the training blocks (what the `chars` alphabet is counted on)."""
        self.setup()
        return torch.bincount(self.train_blocks.flatten(), minlength=len(self.tokenizer))

    def _batches_done(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) of the trainer's strategy; (1, 0) outside a trainer."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _loader_kwargs(self) -> dict:
        # pinned host memory lets the copy to a GPU overlap compute; it buys nothing on a CPU run
        on_cuda = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return {"num_workers": self.cfg.num_workers, "collate_fn": _collate, "pin_memory": on_cuda}

    def train_dataloader(self) -> DataLoader:
        world, rank = self._replicas()
        sampler = ResumableBatchSampler(len(self.train_blocks), self.cfg.batch_size, self.cfg.seed,
                                        self._batches_done, num_replicas=world, rank=rank)
        dataset = TensorDataset(torch.arange(len(self.train_blocks)), self.train_blocks)
        return ResumableLoader(dataset, batch_sampler=sampler, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        first = len(self.train_blocks)  # block indices count train then validation, as in blocks()
        dataset = TensorDataset(torch.arange(first, first + len(self.val_blocks)), self.val_blocks)
        world, rank = self._replicas()
        # Lightning's own convention for evaluation: every rank a strided shard, padded to equal length
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if world > 1 else None
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, **self._loader_kwargs())

    @property
    def n_blocks(self) -> int:
        self.setup()
        return len(self.train_blocks) + len(self.val_blocks)


def _collate(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch: the blocks' token ids [B, T] and their indices in blocks() [B] (the feature cache's rows)."""
    return {"ids": torch.stack([row[1] for row in rows]), "index": torch.stack([row[0] for row in rows])}
