"""The byte escape of character alphabets: every text spells, scores finitely and decodes back."""

import math

import pytest
import torch

from spellm_exp.core.charset import (
    EOS,
    N_NIBBLES,
    N_RESERVED,
    PAD,
    Alphabet,
    CharsetKind,
    SegmentationError,
    SpellingTable,
    TokenSpellings,
)
from spellm_exp.core.decoding import SpeLLMHead, generate
from spellm_exp.core.scoring import score_requests
from spellm_exp.core.spellm import SpeLLM

TEXT = "naïve café — 你好, мир! 🙂 End."
LETTERS = tuple(" abcdefghijklmnopqrstuvwxyzE.,!")


def test_escaped_units_are_characters_and_nibble_pairs():
    alphabet = Alphabet(CharsetKind.chars, ("a", "b"), escape=True)
    assert alphabet.size == N_RESERVED + 2 + N_NIBBLES
    # "é" (C3 A9) is not in the alphabet: each of its bytes spells as two nibbles; a partial byte too
    assert alphabet.spell("aé".encode()) == ("a", 0xC, 0x3, 0xA, 0x9)
    assert alphabet.spell(b"\xc3b") == (0xC, 0x3, "b")
    assert alphabet.symbols_of(("a", 0xC, 0x3)) == [2, 4 + 0xC, 4 + 0x3]
    assert [alphabet.unit_of(s) for s in (2, 3, 4, 4 + 15)] == ["a", "b", 0, 15]
    assert alphabet.to_bytes(("a", 0xC, 0x3, 0xA, 0x9)) == "aé".encode()
    assert alphabet.to_bytes(("a", 0xC)) == b"a"  # a nibble without its partner is dropped
    # without the escape the same text does not spell
    assert Alphabet(CharsetKind.chars, ("a", "b")).symbols_of(Alphabet(CharsetKind.chars, ("a", "b")).spell(
        "aé".encode())) is None


def test_spell_and_to_bytes_round_trip_any_text():
    alphabet = Alphabet(CharsetKind.chars, LETTERS, escape=True)
    for text in (TEXT, "plain words", "\x00\xff", "日本語のテキスト"):
        units = alphabet.spell(text.encode())
        assert alphabet.symbols_of(units) is not None
        assert alphabet.to_bytes(units) == text.encode()
    raw = bytes(range(256))  # not UTF-8 at all
    assert alphabet.to_bytes(alphabet.spell(raw)) == raw


def test_escape_keeps_the_old_fingerprints_and_round_trips_json():
    plain = Alphabet(CharsetKind.chars, ("e", " "))
    assert plain.to_json() == {"kind": "chars", "units": ["e", " "]}  # saved checkpoints still load
    escaped = Alphabet(CharsetKind.chars, ("e", " "), escape=True)
    assert Alphabet.from_json(escaped.to_json()) == escaped != plain
    assert Alphabet(CharsetKind.bytes, tuple(range(256)), escape=True) == Alphabet.bytes_()


def test_table_spells_tokens_outside_the_alphabet_through_the_escape():
    spelled = TokenSpellings(pieces=(None, b"a", "é".encode(), b"\xc3", b"\xa9", b"ab"), end_ids=frozenset({0}),
                             eos_id=0)
    table = SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b"), escape=True), k=4)
    a, b, n = 2, 3, 4  # nibble v is symbol n + v
    assert table.table.tolist() == [[EOS, PAD, PAD, PAD], [a, PAD, PAD, PAD], [n + 0xC, n + 3, n + 0xA, n + 9],
                                    [n + 0xC, n + 3, PAD, PAD], [n + 0xA, n + 9, PAD, PAD], [a, b, PAD, PAD]]
    assert table.spellable.all()
    # a text is covered by bytes: the longest spellable piece first
    assert table.cover("aéab".encode()) == [1, 2, 5]
    assert SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b"), escape=True), k=2).cover(
        "é".encode()) == [3, 4]  # "é" needs 4 symbols: at k=2 its two byte tokens cover it
    with pytest.raises(SegmentationError, match="charset.escape=true spells any byte"):
        SpellingTable(spelled, Alphabet(CharsetKind.chars, ("a", "b")), k=4).cover("é".encode())


@pytest.fixture(scope="module")
def escaped_spellm(tiny_teacher):
    torch.manual_seed(0)
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet(CharsetKind.chars, LETTERS, escape=True), k=8)
    with torch.no_grad():
        spellm.heads.weight.normal_(std=0.3)
    return spellm


def test_text_outside_the_alphabet_gets_a_finite_log_likelihood(escaped_spellm, tiny_teacher):
    result = escaped_spellm.score("Once upon a time", " " + TEXT)
    assert math.isfinite(result.logprob) and result.logprob < 0 and result.failure is None
    plain = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet(CharsetKind.chars, LETTERS), k=8)
    with pytest.raises(SegmentationError):
        plain.score("Once upon a time", " " + TEXT)


def test_escaped_score_is_the_sum_of_head_log_probs_over_the_byte_spelling(escaped_spellm):
    """log p of one escaped token is the sum over heads of log p_i(its nibble spelling), by hand."""
    tokenizer = escaped_spellm.tokenizer
    context, continuation = "Hello", "é"
    ids = tokenizer(context + continuation).input_ids
    context_ids = tokenizer(context).input_ids
    targets = ids[len(context_ids):]
    with torch.no_grad():
        hidden = escaped_spellm.causal_lm.model(torch.tensor([ids[:-1]])).last_hidden_state[0]
        log_probs = torch.log_softmax(escaped_spellm.heads.logits(hidden), -1)  # [positions, k, |Sigma|]
    expected = 0.0
    for offset, token_id in enumerate(targets):
        row = escaped_spellm.spelling.table[token_id]
        position = len(context_ids) - 1 + offset
        expected += sum(log_probs[position, i, row[i]].item() for i in range(escaped_spellm.k))
    assert escaped_spellm.score(context, continuation).logprob == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("text", ["é", "éa"])
def test_decoding_emits_escaped_bytes_as_text(escaped_spellm, text):
    """Heads that spell `text` through nibbles emit it: one vocabulary token ("é"), or a string that is none
    ("éa"), fed back as the tokenizer's ids for it."""
    spellm = escaped_spellm
    units = spellm.alphabet.spell(text.encode())
    target = spellm.alphabet.symbols_of(units) + [PAD] * (spellm.k - len(units))
    saved = {name: p.detach().clone() for name, p in spellm.heads.named_parameters()}
    with torch.no_grad():
        spellm.heads.weight.zero_()
        bias = torch.full_like(spellm.heads.bias, -10.0)
        bias[torch.arange(spellm.k), torch.tensor(target)] = 10.0
        spellm.heads.bias.copy_(bias)
    generation = generate(spellm.causal_lm, spellm.tokenizer, ["Hi"], SpeLLMHead(spellm), max_new_tokens=2)
    with torch.no_grad():
        for name, p in spellm.heads.named_parameters():
            p.copy_(saved[name])
    assert generation.texts == [text * 2]
    one_token = len(spellm.tokenizer(text, add_special_tokens=False).input_ids) == 1
    assert (units in spellm.spelling.string_to_id) == one_token
    assert generation.stats.non_vocab_strings == (0 if one_token else 2)
