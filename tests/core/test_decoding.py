"""The one decode loop: teacher parity with transformers' generate, SpeLLM modes, stop strings."""

import dataclasses

import pytest
import torch

from spellm_exp.core.charset import EOS, PAD, Alphabet, CharsetKind
from spellm_exp.core.decoding import decode
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.teachers import TINY_MODELS

PROMPTS = ["The capital of France is", "Hello", "A much longer prompt, with several words in it"]
LETTERS = Alphabet(CharsetKind.chars, tuple(" abcdefghijklmnopqrstuvwxyz"))


def _generate_reference(teacher, prompts, max_new_tokens):
    enc = teacher.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    out = teacher.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=teacher.tokenizer.pad_token_id)
    return out[:, enc.input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_teacher_mode_reproduces_generate_token_for_token(name, tiny_teacher):
    teacher = tiny_teacher(name)
    result = decode(teacher, PROMPTS, mode="teacher", max_new_tokens=12, ignore_eos=True)
    assert result.token_ids == _generate_reference(teacher, PROMPTS, 12)
    assert result.texts == [teacher.tokenizer.decode(ids, skip_special_tokens=True) for ids in result.token_ids]
    stats = result.stats
    assert (stats.strings, stats.new_tokens, stats.steps) == (36, 36, 11)
    assert stats.new_chars == sum(map(len, result.texts)) and stats.non_vocab_share == 0


def test_stop_strings_cut_the_text(tiny_teacher):
    teacher = tiny_teacher("tiny_llama")
    full = decode(teacher, PROMPTS[:1], mode="teacher", max_new_tokens=12, ignore_eos=True)
    stop = full.texts[0][5:8]
    cut = decode(teacher, PROMPTS[:1], mode="teacher", max_new_tokens=12, ignore_eos=True, stop=[stop])
    assert cut.texts[0] == full.texts[0][: full.texts[0].index(stop)]
    assert cut.stats.strings < full.stats.strings


def test_vocab_mode_emits_only_vocabulary_tokens(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_gemma"), LETTERS, k=6)
    with torch.no_grad():
        spellm.heads.weight.normal_(std=1.0)
    result = decode(spellm, PROMPTS, mode="vocab", max_new_tokens=8)
    pieces = spellm.spelling.spellings.pieces
    assert result.stats.non_vocab_strings == 0 and result.stats.strings == 24
    for ids, text in zip(result.token_ids, result.texts):
        assert all(spellm.spelling.spellable[i] for i in ids)
        assert b"".join(pieces[i] for i in ids).decode() == text


def _rig(spellm, spelling: list[int]):
    """Heads that ignore the hidden state and always spell `spelling`."""
    with torch.no_grad():
        spellm.heads.weight.zero_()
        spellm.heads.bias.fill_(-20.0)
        for i, symbol in enumerate(spelling):
            spellm.heads.bias[i, symbol] = 20.0


def _symbols(text, k):
    index = {c: i + 2 for i, c in enumerate(LETTERS.units)}
    return [index[c] for c in text] + [PAD] * (k - len(text))


def test_free_mode_feeds_every_id_of_a_non_vocabulary_string(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6)
    _rig(spellm, _symbols(" qzxv", 6))
    ids = spellm.tokenizer(" qzxv", add_special_tokens=False).input_ids
    assert len(ids) > 1 and (" ", "q", "z", "x", "v") not in spellm.spelling.string_to_id
    result = decode(spellm, PROMPTS[:2], mode="free", max_new_tokens=3)
    assert result.texts == [" qzxv" * 3] * 2
    assert result.token_ids == [ids * 3] * 2
    stats = result.stats
    assert stats.strings == 6 and stats.non_vocab_share == 1.0
    assert stats.steps == 2 * len(ids)  # the ids of the first two strings are fed; the last is not needed
    # the head runs only where a string starts: the other steps feed the rest of a string's ids
    assert [asked for _, asked in stats.step_seconds] == ([True] + [False] * (len(ids) - 1)) * 2


def test_the_loop_times_prefill_and_each_step_with_the_given_clock(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6)
    _rig(spellm, _symbols(" the", 6))
    ticks = iter(range(1000))
    stats = decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=3, clock=lambda: float(next(ticks))).stats
    # clock calls: start 0, prefilled 1, then per step (start, end) = (2, 3), (4, 5); the last proposal 6; end 7
    assert stats.prefill_seconds == 1.0 and stats.step_seconds == [(1.0, True), (1.0, True)]
    assert stats.decode_seconds == 6.0


def test_free_mode_uses_the_vocabulary_id_when_the_string_is_a_token(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6)
    _rig(spellm, _symbols(" the", 6))
    result = decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=4)
    token = spellm.spelling.string_to_id[tuple(" the")]
    assert result.token_ids == [[token] * 4] and result.stats.non_vocab_strings == 0
    assert result.stats.steps == 3


def test_free_mode_stops_at_eos_and_never_starts_with_pad(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=4)
    _rig(spellm, [EOS, PAD, PAD, PAD])
    assert decode(spellm, PROMPTS, mode="free", max_new_tokens=5).texts == ["", "", ""]
    _rig(spellm, [PAD, PAD, PAD, PAD])
    with torch.no_grad():
        spellm.heads.bias[0, LETTERS.units.index("a") + 2] = 10.0  # second best at position 1
    assert decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=2).texts == ["aa"]


def test_unknown_mode_is_rejected(tiny_teacher):
    with pytest.raises(ValueError, match=r"decode=beam is unknown"):
        decode(tiny_teacher("tiny_llama"), PROMPTS, mode="beam")


def test_teacher_ids_past_the_tokenizer_are_fed_back_without_text(tiny_teacher):
    from spellm_exp.core.decoding import TeacherHead

    teacher = tiny_teacher("tiny_llama")
    spellings = SpeLLM.build(teacher, LETTERS, k=4).spelling.spellings
    head = TeacherHead(teacher.model, spellings)
    vocab = teacher.model.get_output_embeddings().weight.shape[0]
    past = len(spellings.pieces) - 1  # pretend the tokenizer ends here: its last id is now "past" it
    head.spellings = dataclasses.replace(spellings, pieces=spellings.pieces[:past])
    hidden = teacher.model.get_output_embeddings().weight[past].detach().unsqueeze(0) * 100
    (proposal,) = head.propose(hidden)
    assert proposal.ids == (past,) and proposal.text == b"" and past < vocab
