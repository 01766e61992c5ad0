"""String -> id on the device equals the host's string -> id table, row for row."""

import pytest
import torch

from spellm_exp.core.charset import EOS, PAD, Alphabet, SpellingTable, TokenSpellings
from spellm_exp.core.vocab_lookup import VocabLookup, hash_powers, normalise, prefix_keys, string_keys


@pytest.fixture(scope="module")
def spelling(tiny_teacher):
    return SpellingTable(TokenSpellings.from_tokenizer(tiny_teacher("tiny_llama").tokenizer),
                         Alphabet.ascii_(escape=True), k=8)


def _host(spelling, row):
    """The host decoder's rule (decoding.SpeLLMHead._string)."""
    if row[0] == EOS:
        return spelling.spellings.eos_id, True
    length = next((i for i, s in enumerate(row) if s in (PAD, EOS)), len(row))
    token_id = spelling.string_to_id.get(tuple(spelling.alphabet.unit_of(s) for s in row[:length]))
    return (-1, False) if token_id is None else (token_id, True)


def test_every_vocabulary_spelling_finds_its_lowest_token_id(spelling):
    lookup = VocabLookup(spelling)
    rows = spelling.table[spelling.spellable]
    ids, found = lookup(rows)
    expected = [_host(spelling, row) for row in rows.tolist()]
    assert ids.tolist() == [e[0] for e in expected] and found.tolist() == [e[1] for e in expected]
    assert found.all()


def test_random_strings_and_garbage_after_the_end(spelling):
    generator = torch.Generator().manual_seed(0)
    lookup = VocabLookup(spelling)
    words = spelling.table[spelling.spellable][:500]
    noise = torch.randint(2, spelling.alphabet.size, words.shape, generator=generator)
    # after a token's end the heads may emit anything: it is not part of the string
    tails = torch.where(torch.arange(8) > words.argmin(-1, keepdim=True), noise, words)
    randoms = torch.randint(2, spelling.alphabet.size, (500, 8), generator=generator)
    randoms[:5, 0] = EOS
    symbols = torch.cat([tails, randoms])
    ids, found = lookup(symbols)
    expected = [_host(spelling, row) for row in symbols.tolist()]
    assert ids.tolist() == [e[0] for e in expected] and found.tolist() == [e[1] for e in expected]
    assert 0 < int(found[500:].sum()) < 500  # some random strings are tokens (the EOS rows), most are not
    assert normalise(torch.tensor([[5, PAD, 7, EOS]])).tolist() == [[5, PAD, PAD, PAD]]


def test_a_wrong_candidate_is_never_returned(spelling):
    """A key that leads to another token's row (what a hash collision does) reads as no token, not as it."""
    lookup = VocabLookup(spelling)
    lookup.sorted_ids.copy_(lookup.sorted_ids.roll(1))
    rows = spelling.table[spelling.spellable & (spelling.table[:, 0] != EOS)][:200]
    ids, found = lookup(rows)
    assert not found.any() and (ids == -1).all()


def test_device_cover_is_the_hosts_longest_prefix_rule(spelling):
    """VocabLookup.cover (the decode step) and SpellingTable.cover_units (the host) split strings alike."""
    generator = torch.Generator().manual_seed(1)
    lookup = VocabLookup(spelling)
    words = spelling.table[spelling.spellable][:300]
    glued = torch.cat([words[:, :4], words.roll(1, 0)[:, :4]], dim=1)  # two token starts: mostly no token
    randoms = torch.randint(2, spelling.alphabet.size, (300, 8), generator=generator)
    symbols = torch.cat([words, normalise(glued), randoms])
    ids, lengths = lookup.cover(symbols)
    for row, token_id, length in zip(symbols.tolist(), ids.tolist(), lengths.tolist()):
        if row[0] == EOS:
            assert (token_id, length) == (spelling.spellings.eos_id, 8)
            continue
        end = next((i for i, s in enumerate(row) if s in (PAD, EOS)), len(row))
        units = tuple(spelling.alphabet.unit_of(s) for s in row[:end])
        host, _ = spelling.cover_units(units)
        if not host:
            assert (token_id, length) == (-1, 0)
            continue
        assert token_id == host[0]
        spelled = tuple(spelling.alphabet.unit_of(s) for s in row[:length] if s != PAD)
        assert spelling.string_to_id[spelled] == token_id and length >= len(spelled)
    assert (lengths < 8).sum() > 300  # the glued and random rows split


def test_prefix_keys_are_the_keys_of_the_pad_filled_prefixes():
    generator = torch.Generator().manual_seed(2)
    strings = normalise(torch.randint(0, 90, (50, 6), generator=generator))
    powers = hash_powers(6)
    expected = torch.stack([string_keys(torch.where(torch.arange(6) <= j, strings, PAD), powers)
                            for j in range(6)], dim=1)
    assert torch.equal(prefix_keys(strings, powers), expected)
    assert torch.equal(prefix_keys(strings, powers)[:, -1], string_keys(strings, powers))
