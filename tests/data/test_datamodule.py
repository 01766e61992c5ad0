"""Packed blocks, the on-disk cache, the validation hold-out and the resumable batch order."""

import pytest
import torch
from ..conftest import compose_train

from spellm_exp.data import datamodule as dm
from spellm_exp.data.corpus import SOURCES, corpus_texts, iter_texts
from spellm_exp.data.datamodule import (
    DataConfig,
    DistillDataModule,
    ResumableBatchSampler,
    pack_blocks,
)


def test_sources_are_training_splits_with_the_documented_sizes():
    boolq = list(iter_texts("boolq"))
    assert len(boolq) == 9_427 and " -- " in boolq[0] and "Question:" not in boolq[0]
    plays = corpus_texts(["shakespeare"], max_chars_per_source=1000)
    assert 1000 <= sum(map(len, plays)) < 1000 + max(map(len, plays))
    with pytest.raises(ValueError, match=r"Unknown corpus source 'wiki'"):
        list(iter_texts("wiki"))
    assert SOURCES == ("boolq", "hellaswag", "shakespeare", "arc_easy", "arc_challenge", "openbookqa", "piqa",
                       "boolq_qa")


def test_question_answer_sources_hold_each_train_question_once_with_its_gold_answer():
    arc = list(iter_texts("arc_easy"))
    assert len(arc) == len(set(arc)) == 2_245
    assert arc[0] == ("Question: Which factor will most likely cause a person to develop a fever?\n"
                      "Answer: a bacterial population in the bloodstream")
    piqa = list(iter_texts("piqa"))
    assert piqa[0] == "Goal: When boiling butter, when it's ready, you can\nAnswer: Pour it into a jar"
    assert {len(list(iter_texts(task))) for task in ("arc_challenge", "openbookqa")} == {1_118, 4_835}
    mix = compose_train("data=mix_qa").data  # every source of the config group is one the corpus knows
    dm.check_data_config(mix)
    assert "shakespeare" not in mix.sources and "arc_easy" in mix.sources


def test_boolq_with_answers_holds_each_passage_question_and_its_yes_or_no():
    passages, answered = list(iter_texts("boolq")), list(iter_texts("boolq_qa"))
    assert len(answered) == len(set(answered)) == len(passages)  # one question per train passage
    assert answered[0].startswith(passages[0] + "\nQuestion: ") and answered[0].endswith("?\nAnswer: yes")
    assert {text.rsplit("Answer: ", 1)[1] for text in answered} == {"yes", "no"}
    mix = compose_train("data=mix_qa_boolq").data
    dm.check_data_config(mix)
    assert "boolq_qa" in mix.sources and "boolq" not in mix.sources


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


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_slices_of_the_one_process_batches(world):
    done = {"n": 0}
    single = ResumableBatchSampler(23, 2 * world, seed=5, batches_done=lambda: done["n"])
    ranks = [ResumableBatchSampler(23, 2, seed=5, batches_done=lambda: done["n"], num_replicas=world, rank=r)
             for r in range(world)]
    assert {len(s) for s in ranks} == {len(single)} == {23 // (2 * world)}
    for batches_done in (0, 1):  # from the start, and resumed after one global batch
        done["n"] = batches_done
        shards = [list(s) for s in ranks]
        for step, batch in enumerate(single):
            assert sum((shard[step] for shard in shards), []) == batch  # rank r holds slice r, in order
        assert len(set(sum(sum(shards, []), []))) == sum(len(b) for b in list(single))


def test_a_global_batch_larger_than_the_data_names_the_fix():
    with pytest.raises(ValueError, match=r"fewer than one global batch \(data.batch_size=4 x 3 devices\)"):
        ResumableBatchSampler(10, 4, seed=0, batches_done=lambda: 0, num_replicas=3, rank=0)


def test_loaders_follow_the_trainer_rank_and_pin_memory_for_a_gpu(tiny_teacher):
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    cfg = DataConfig(sources=["shakespeare"], max_chars_per_source=5000, block_size=16, batch_size=2, val_blocks=4)
    data = DistillDataModule(tiny_teacher("tiny_qwen").tokenizer, cfg)
    data.setup()
    assert not data.train_dataloader().pin_memory and data.val_dataloader().sampler.__class__ is not DistributedSampler
    data.trainer = SimpleNamespace(world_size=2, global_rank=1, global_step=0, accumulate_grad_batches=1,
                                   strategy=SimpleNamespace(root_device=torch.device("cuda", 1)))
    train, val = data.train_dataloader(), data.val_dataloader()
    assert train.pin_memory and val.pin_memory
    assert (train.batch_sampler.num_replicas, train.batch_sampler.rank) == (2, 1)
    assert isinstance(val.sampler, DistributedSampler) and list(val.sampler) == [1, 3]  # rank 1's strided half
