"""Packed blocks, the on-disk cache, the validation hold-out and the resumable batch order."""

import pytest
import torch

from spellm_exp.data import datamodule as dm
from spellm_exp.data.corpus import SOURCES, corpus_texts, iter_texts
from spellm_exp.data.datamodule import DataConfig, DistillDataModule, ResumableBatchSampler, pack_blocks


def test_sources_are_training_splits_with_the_documented_sizes():
    boolq = list(iter_texts("boolq"))
    assert len(boolq) == 9_427 and " -- " in boolq[0] and "Question:" not in boolq[0]
    plays = corpus_texts(["shakespeare"], max_chars_per_source=1000)
    assert 1000 <= sum(map(len, plays)) < 1000 + max(map(len, plays))
    with pytest.raises(ValueError, match=r"Unknown corpus source 'wiki'"):
        list(iter_texts("wiki"))
    assert SOURCES == ("boolq", "hellaswag", "shakespeare")


def test_pack_blocks_joins_documents_with_eos(tiny_teacher):
    tokenizer = tiny_teacher("tiny_qwen").tokenizer  # GPT-NeoX: no BOS
    texts = ["one two three", "four five"]
    stream = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    blocks = pack_blocks(tokenizer, texts, block_size=3)
    assert blocks.tolist() == [stream[i:i + 3] for i in range(0, len(stream) - 2, 3)]


def test_pack_blocks_starts_every_block_with_bos_when_the_tokenizer_uses_one(tiny_teacher):
    tokenizer = tiny_teacher("tiny_gemma").tokenizer
    blocks = pack_blocks(tokenizer, ["a b c d e f g h i j k l m n o p"], block_size=5)
    assert (blocks[:, 0] == tokenizer.bos_token_id).all() and blocks.shape[1] == 5
    assert tokenizer.bos_token_id not in blocks[:, 1:].flatten().tolist()


def test_blocks_are_cached_and_reused(tiny_teacher, tmp_path, monkeypatch):
    tokenizer = tiny_teacher("tiny_qwen").tokenizer
    cfg = DataConfig(sources=["shakespeare"], max_chars_per_source=5000, block_size=16, batch_size=2, val_blocks=4,
                     cache_dir=str(tmp_path))
    first = DistillDataModule(tokenizer, cfg)
    first.setup()
    assert len(list((tmp_path / "blocks").glob("*.pt"))) == 1
    monkeypatch.setattr(dm, "corpus_texts", pytest.fail)  # a second run must not re-read the text
    second = DistillDataModule(tokenizer, cfg)
    second.setup()
    assert torch.equal(first.train_blocks, second.train_blocks) and torch.equal(first.val_blocks, second.val_blocks)
    assert len(second.val_blocks) == 4
    counts = second.train_token_counts()
    assert counts.sum() == second.train_blocks.numel()


def test_batch_order_depends_on_seed_and_epoch_and_skips_batches_done():
    done = {"n": 0}
    sampler = ResumableBatchSampler(10, 3, seed=7, batches_done=lambda: done["n"])
    epoch0 = list(sampler)
    assert len(epoch0) == 3 and sorted(sum(epoch0, [])) == sorted(set(sum(epoch0, [])))
    assert list(sampler) == epoch0  # same seed and epoch: same order
    done["n"] = 2
    assert list(sampler) == epoch0[2:]  # resumed after two batches
    done["n"] = 3
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and len(epoch1) == 3


def test_too_little_text_is_a_clear_error(tiny_teacher):
    cfg = DataConfig(sources=["shakespeare"], max_chars_per_source=100, block_size=64, val_blocks=8)
    with pytest.raises(ValueError, match=r"too few for data.val_blocks=8"):
        DistillDataModule(tiny_teacher("tiny_qwen").tokenizer, cfg).setup()
