"""Alphabets, spellings and the spelling table, on the real tokenizers we ship."""

from collections import Counter

import pytest
import torch

from spellm_exp.core.charset import (
    ASCII_UNITS,
    EOS,
    PAD,
    Alphabet,
    CharsetKind,
    SpellingError,
    SpellingTable,
    TokenSpellings,
    build_alphabet,
    check_charset,
    token_counts,
)
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.teachers.tokenizers import load_offline_tokenizer

TOKENIZERS = ("smollm2", "gpt-neox", "gemma3")


@pytest.fixture(scope="module")
def spellings(cache_dir):
    loaded = {}

    def get(name):
        if name not in loaded:
            tokenizer = load_offline_tokenizer(name, cache_dir)
            loaded[name] = (tokenizer, TokenSpellings.from_tokenizer(tokenizer))
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def real_text():
    docs = corpus_texts(max_chars_per_source=20_000)
    return docs + ["naïve café — 你好, мир! 🙂\n\tEnd.", "  leading spaces\n\n\n  and tabs\t\t"]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_concatenated_spellings_equal_decode(name, spellings, real_text):
    tokenizer, spelled = spellings(name)
    for text in real_text:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        joined = b"".join(spelled.pieces[i] for i in ids).decode("utf-8")
        assert joined == tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


@pytest.mark.parametrize("name", TOKENIZERS)
def test_end_tokens_spell_as_eos_and_other_specials_do_not_spell(name, spellings):
    tokenizer, spelled = spellings(name)
    table = SpellingTable(spelled, Alphabet.bytes_(), k=8)
    assert tokenizer.eos_token_id in spelled.end_ids
    assert table.table[tokenizer.eos_token_id].tolist() == [EOS] + [PAD] * 7
    for token_id in spelled.end_ids:
        assert table.table[token_id, 0] == EOS
    others = [i for i in tokenizer.all_special_ids if i not in spelled.end_ids]
    assert not table.spellable[others].any()


def test_partial_utf8_tokens_spell_only_in_bytes_mode(spellings):
    _, spelled = spellings("smollm2")
    partial = [i for i, p in enumerate(spelled.pieces) if p is not None and _is_partial(p)]
    assert len(partial) > 300  # offline-assets.md counts 314 by its own measure
    assert SpellingTable(spelled, Alphabet.bytes_(), k=8).spellable[partial].all()
    assert not SpellingTable(spelled, Alphabet.ascii_(), k=8).spellable[partial].any()


def _is_partial(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_gemma_byte_fallback_tokens_spell_their_byte(spellings):
    tokenizer, spelled = spellings("gemma3")
    newline = tokenizer.convert_tokens_to_ids("<0x0A>")
    assert spelled.pieces[newline] == b"\n"
    assert spelled.pieces[tokenizer.convert_tokens_to_ids("\u2581the")] == b" the"


def test_table_on_a_hand_made_vocabulary():
    spelled = TokenSpellings(pieces=(None, b"a", b"ab", b"abc", b" b", b"\xc3", "é".encode()),
                             end_ids=frozenset({0}), eos_id=0)
    alphabet = Alphabet(CharsetKind.chars, ("a", "b", " "))
    table = SpellingTable(spelled, alphabet, k=2)
    a, b, space = 2, 3, 4
    assert table.table.tolist() == [[EOS, PAD], [a, PAD], [a, b], [PAD, PAD], [space, b], [PAD, PAD], [PAD, PAD]]
    assert table.spellable.tolist() == [True, True, True, False, True, False, False]
    assert table.string_to_id == {("a",): 1, ("a", "b"): 2, (" ", "b"): 4}
    counts = torch.tensor([0, 5, 3, 2, 0, 0, 0])
    assert table.coverage(counts) == {"vocab_coverage": 4 / 7, "corpus_coverage": 0.8}


def test_chars_alphabet_counts_weighted_characters_with_ties_by_code_point():
    spelled = TokenSpellings(pieces=(None, b"ab", b"b", b"ca", b"z"), end_ids=frozenset({0}), eos_id=0)
    counts = torch.tensor([100, 2, 1, 1, 3])
    # a: 2 + 1 = 3, b: 2 + 1 = 3, c: 1, z: 3; the EOS token's count is ignored
    alphabet = build_alphabet("chars", 3, spelled, counts)
    assert alphabet.units == ("a", "b", "z")
    assert alphabet.size == 5
    assert Alphabet.most_frequent(Counter({"y": 1, "x": 1}), 1).units == ("x",)


def test_alphabets_have_the_documented_sizes():
    assert Alphabet.bytes_().size == 258
    assert Alphabet.ascii_().size == len(ASCII_UNITS) + 2 == 99


def test_alphabet_json_round_trip():
    for alphabet in (Alphabet.bytes_(), Alphabet.ascii_(), Alphabet(CharsetKind.chars, ("e", " ", "\n"))):
        assert Alphabet.from_json(alphabet.to_json()) == alphabet


def test_token_counts(spellings):
    tokenizer, _ = spellings("gpt-neox")
    counts = token_counts(tokenizer, ["hello hello", "hello"], batch_size=1)
    ids = tokenizer("hello hello", add_special_tokens=False).input_ids + tokenizer("hello").input_ids
    assert counts.sum() == len(ids)
    assert counts[ids[0]] == 2


@pytest.mark.parametrize("kind,size,k,message", [
    ("chars", 64, 0, r"k=0: .* >= 1"),
    ("chars", 64, -3, r"k=-3"),
    ("chars", 0, 8, r"charset.size=0: the alphabet holds PAD, EOS .* use charset.size >= 2"),
    ("chars", 1, 8, r"charset.size=1: .*fewer than 2 characters cannot spell text"),
    ("letters", 64, 8, r"charset.kind=letters is unknown; use one of \['chars', 'bytes', 'ascii'\]"),
])
def test_bad_charset_config_fails_early(kind, size, k, message):
    with pytest.raises(SpellingError, match=message):
        check_charset(kind, size, k)
