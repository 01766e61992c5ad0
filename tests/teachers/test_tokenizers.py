"""Offline tokenizers and the BPE truncation used for stand-in vocabularies."""

import pytest

from spellm_exp.teachers.tokenizers import load_offline_tokenizer, truncate_bpe

TEXT = "Hello  world!\n\tCafé au lait, naïve résumé; 1234567 tokens.\n\n"


@pytest.mark.parametrize("name,size,eos", [("smollm2", 49_152, "<|im_end|>"),
                                           ("gpt-neox", 50_280, "<|endoftext|>"),
                                           ("gemma3", 262_144, "<eos>")])
def test_offline_tokenizers_round_trip(name, size, eos, cache_dir):
    tokenizer = load_offline_tokenizer(name, cache_dir)
    assert len(tokenizer) == size
    assert tokenizer.eos_token == eos
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == TEXT


@pytest.mark.parametrize("vocab_size", [32_000, 1_000])
def test_truncated_bpe_keeps_ids_below_the_limit_and_round_trips(vocab_size, cache_dir):
    full = load_offline_tokenizer("gpt-neox", cache_dir)
    small = truncate_bpe(full, vocab_size)
    assert len(small) <= vocab_size
    ids = small(TEXT).input_ids
    assert max(ids) < vocab_size
    assert small.decode(ids) == TEXT
    assert len(ids) >= len(full(TEXT).input_ids)  # fewer merges, more pieces
    assert small.eos_token_id == full.eos_token_id == 0


def test_truncation_is_a_no_op_when_the_vocabulary_fits(cache_dir):
    full = load_offline_tokenizer("gpt-neox", cache_dir)
    assert truncate_bpe(full, 60_000) is full
