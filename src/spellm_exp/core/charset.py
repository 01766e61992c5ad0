"""The alphabet Sigma, token spellings, the spelling table S[|V|, k], and coverage.

A token's spelling is the exact text it adds to the decoded string (method.md). Byte-level BPE
(GPT-2 style: SmolLM2, GPT-NeoX) maps its marker characters back through the byte decoder;
SentencePiece-style BPE (Gemma) turns the word marker into a space and byte-fallback tokens
(`<0x0A>`) into their byte. Spellings are kept as bytes: `bytes` mode spells bytes, `chars` and
`ascii` modes spell the UTF-8 characters. With the byte escape (`charset.escape=true`, method.md), a
character alphabet also spells every byte that is not part of one of its characters (a character outside
the alphabet, or a partial UTF-8 token) as two of 16 nibble symbols, so every text has a spelling.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

from spellm_exp.config import CharsetKind
from spellm_exp.errors import SpellmError

PAD, EOS = 0, 1  # symbol ids shared by every alphabet; characters start at 2
N_RESERVED = 2
# end-of-sequence and end-of-turn tokens of the families we ship: all spell as the EOS symbol
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<eos>", "<end_of_turn>", "</s>", "<|eot_id|>", "<|end_of_text|>")
ASCII_UNITS = tuple(chr(c) for c in range(0x20, 0x7F)) + ("\n", "\t")
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SP_SPACE = "\u2581"


MIN_CHARS = 2  # one character spells only runs of itself (in practice: whitespace tokens)


class SpellingError(SpellmError, ValueError):
    """Bad alphabet or spelling configuration, or a table that does not match its tokenizer."""


class SegmentationError(ValueError):
    """A string that no sequence of spellable vocabulary tokens covers."""


Unit = str | int  # a character (chars, ascii), a byte value (bytes), or a nibble 0-15 (escaped bytes in chars, ascii)
N_NIBBLES = 16  # an escaped byte b spells as the nibble symbols b >> 4, b & 15


@dataclass(frozen=True)
class Alphabet:
    """Sigma = {PAD, EOS} + units (+ 16 nibble symbols with `escape`), in symbol-id order."""

    kind: CharsetKind
    units: tuple[Unit, ...]
    escape: bool = False  # character alphabets only: spell any other byte as two nibble symbols

    def __post_init__(self):
        if self.escape and self.kind == CharsetKind.bytes:  # bytes spell everything already
            object.__setattr__(self, "escape", False)

    @property
    def size(self) -> int:
        return N_RESERVED + len(self.units) + (N_NIBBLES if self.escape else 0)

    @property
    def index(self) -> dict[Unit, int]:
        return _unit_index(self)

    def symbols_of(self, units: Iterable[Unit]) -> list[int] | None:
        """Symbol ids of `units`, or None when one of them is not in the alphabet."""
        index = self.index
        symbols = [index.get(u) for u in units]
        return None if any(s is None for s in symbols) else symbols

    @property
    def label(self) -> str:
        """How tables name it: chars-64, bytes-256, and `+esc` with the byte escape."""
        return f"{self.kind.value}-{len(self.units)}{'+esc' if self.escape else ''}"

    def unit_of(self, symbol: int) -> Unit:
        position = symbol - N_RESERVED
        return self.units[position] if position < len(self.units) else position - len(self.units)

    def spell(self, piece: bytes) -> tuple[Unit, ...] | None:
        """The units that spell `piece` (a token's or a text's bytes); None where this alphabet cannot.

        Without escape that is the UTF-8 characters (bytes: the bytes), whether or not each is in the
        alphabet (`symbols_of` says); with escape, each character of the alphabet, and for every other byte
        its two nibbles, so every byte string spells.
        """
        if self.kind == CharsetKind.bytes:
            return tuple(piece)
        if not self.escape:
            try:
                return tuple(piece.decode("utf-8"))
            except UnicodeDecodeError:  # a partial UTF-8 sequence
                return None
        index, units, start = self.index, [], 0
        while start < len(piece):
            width = _utf8_width(piece[start])
            try:
                char = piece[start:start + width].decode("utf-8")
            except UnicodeDecodeError:
                char = None
            if char is not None and char in index:
                units.append(char)
                start += width
            else:  # escaped: this byte alone; the rest of an unknown character follows byte by byte
                units += [piece[start] >> 4, piece[start] & 15]
                start += 1
        return tuple(units)

    def to_bytes(self, units: Iterable[Unit]) -> bytes:
        """The text that `units` spell: the inverse of `spell`. Escaped bytes are nibble pairs; a nibble
        without its partner (only a decoder emits one) is dropped."""
        if self.kind == CharsetKind.bytes:
            return bytes(units)
        out, high = bytearray(), None
        for unit in units:
            if isinstance(unit, str):
                out += unit.encode("utf-8")
                high = None
            elif high is None:
                high = unit
            else:
                out.append(high << 4 | unit)
                high = None
        return bytes(out)

    def to_json(self) -> dict:
        # no "escape" key unless set: the alphabets saved before it existed keep their fingerprints
        return {"kind": self.kind.value, "units": list(self.units), **({"escape": True} if self.escape else {})}

    @classmethod
    def from_json(cls, data: dict) -> Alphabet:
        return cls(CharsetKind(data["kind"]), tuple(data["units"]), bool(data.get("escape", False)))

    @classmethod
    def bytes_(cls) -> Alphabet:
        return cls(CharsetKind.bytes, tuple(range(256)))

    @classmethod
    def ascii_(cls, escape: bool = False) -> Alphabet:
        return cls(CharsetKind.ascii, ASCII_UNITS, escape)

    @classmethod
    def most_frequent(cls, char_counts: Counter, size: int, escape: bool = False) -> Alphabet:
        """The `size` most frequent characters; ties broken by code point, so the set is deterministic."""
        ranked = sorted(char_counts.items(), key=lambda item: (-item[1], ord(item[0])))
        return cls(CharsetKind.chars, tuple(char for char, _ in ranked[:size]), escape)


@lru_cache(maxsize=16)
def _unit_index(alphabet: Alphabet) -> dict[Unit, int]:
    index: dict[Unit, int] = {unit: N_RESERVED + i for i, unit in enumerate(alphabet.units)}
    if alphabet.escape:  # nibbles are ints, characters are strings: the keys never collide
        index.update({nibble: N_RESERVED + len(alphabet.units) + nibble for nibble in range(N_NIBBLES)})
    return index


def _utf8_width(lead: int) -> int:
    """Bytes in the UTF-8 sequence that `lead` starts (1 for a byte that cannot start one)."""
    return 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1


def check_charset(kind: str, size: int, k: int) -> None:
    """Fail before any work on a k or alphabet that cannot work; the message names the fix."""
    if not isinstance(k, int) or k < 1:
        raise SpellingError(f"k={k}: the number of character heads must be an integer >= 1 (e.g. k=16).")
    kinds = [c.value for c in CharsetKind]
    if kind not in kinds:
        raise SpellingError(f"charset.kind={kind} is unknown; use one of {kinds}.")
    if kind == CharsetKind.chars and (not isinstance(size, int) or size < MIN_CHARS):
        raise SpellingError(
            f"charset.size={size}: the alphabet holds PAD, EOS and charset.size characters, and fewer than "
            f"{MIN_CHARS} characters cannot spell text; use charset.size >= {MIN_CHARS} (e.g. 64), or charset=bytes.")


@dataclass(frozen=True)
class TokenSpellings:
    """What each token id adds to the decoded text (bytes), independent of k and alphabet.

    `pieces[v]` is None for special tokens, which do not spell; `end_ids` spell as EOS.
    """

    pieces: tuple[bytes | None, ...]
    end_ids: frozenset[int]
    eos_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> TokenSpellings:
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        byte_level = _uses_byte_level(state)
        byte_decoder = _byte_decoder()
        added = {entry["id"]: entry for entry in state["added_tokens"]}
        vocab_size = len(tokenizer)
        id_to_piece = {i: piece for piece, i in state["model"]["vocab"].items()}
        pieces: list[bytes | None] = []
        for token_id in range(vocab_size):
            if token_id in added:
                entry = added[token_id]
                pieces.append(None if entry["special"] else entry["content"].encode("utf-8"))
            elif token_id not in id_to_piece:
                pieces.append(None)  # a hole in the id range: nothing to spell
            elif byte_level:
                pieces.append(bytes(byte_decoder[c] for c in id_to_piece[token_id]))
            else:
                pieces.append(_sentencepiece_bytes(id_to_piece[token_id]))
        end_ids = {tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS if t in tokenizer.get_vocab()}
        end_ids.add(tokenizer.eos_token_id)
        return cls(tuple(pieces), frozenset(end_ids), tokenizer.eos_token_id)

    def units(self, token_id: int, kind: CharsetKind) -> tuple[Unit, ...] | None:
        """The spelling of a non-end token in units of `kind`; None if it has no spelling there."""
        piece = self.pieces[token_id]
        if piece is None:
            return None
        return bytes_to_units(piece, kind)


def bytes_to_units(piece: bytes, kind: CharsetKind) -> tuple[Unit, ...] | None:
    if kind == CharsetKind.bytes:
        return tuple(piece)
    try:
        return tuple(piece.decode("utf-8"))
    except UnicodeDecodeError:  # a partial UTF-8 sequence spells only in bytes mode
        return None


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable bytes stand for themselves, the rest for chr(256+n)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    decoder = {chr(byte): byte for byte in printable}
    others = [byte for byte in range(256) if byte not in set(printable)]
    decoder.update({chr(256 + n): byte for n, byte in enumerate(others)})
    return decoder


def _uses_byte_level(state: dict) -> bool:
    parts = [state.get("decoder") or {}, state.get("pre_tokenizer") or {}]
    parts += (state.get("decoder") or {}).get("decoders", [])
    return any(part.get("type") == "ByteLevel" for part in parts)


def _sentencepiece_bytes(piece: str) -> bytes:
    byte = _BYTE_FALLBACK.match(piece)
    return bytes([int(byte.group(1), 16)]) if byte else piece.replace(_SP_SPACE, " ").encode("utf-8")


def character_counts(spellings: TokenSpellings, token_counts: torch.Tensor) -> Counter:
    """Character frequencies over the spellings of corpus tokens, each token weighted by its count."""
    counts: Counter = Counter()
    for token_id in torch.nonzero(token_counts).flatten().tolist():
        if token_id in spellings.end_ids:
            continue
        chars = spellings.units(token_id, CharsetKind.chars)
        for char in chars or ():
            counts[char] += int(token_counts[token_id])
    return counts


def build_alphabet(kind: str, size: int, spellings: TokenSpellings | None = None,
                   token_counts: torch.Tensor | None = None, escape: bool = False) -> Alphabet:
    if kind == CharsetKind.bytes:
        return Alphabet.bytes_()
    if kind == CharsetKind.ascii:
        return Alphabet.ascii_(escape)
    if spellings is None or token_counts is None:
        raise SpellingError("charset=chars counts characters on a corpus: pass the spellings and token counts.")
    return Alphabet.most_frequent(character_counts(spellings, token_counts), size, escape)


def _spellings_in(spellings: TokenSpellings, alphabet: Alphabet):
    """(units, symbol ids) per token id; end tokens: (None, [EOS]); (None, None) if it does not spell."""
    for token_id in range(len(spellings.pieces)):
        if token_id in spellings.end_ids:
            yield None, [EOS]
            continue
        piece = spellings.pieces[token_id]
        units = alphabet.spell(piece) if piece is not None else None
        yield units, (alphabet.symbols_of(units) if units else None)


def spelled_symbols(spellings: TokenSpellings, alphabet: Alphabet) -> list[list[int] | None]:
    """Each token's spelling as symbol ids of any length (end tokens: [EOS]); None if it does not spell."""
    return [symbols for _, symbols in _spellings_in(spellings, alphabet)]


def spelled_lengths(spellings: TokenSpellings, alphabet: Alphabet) -> torch.Tensor:
    """Symbols per token (0: does not spell at any k); a token spells with k heads iff 1 <= length <= k."""
    return torch.tensor([len(s) if s else 0 for s in spelled_symbols(spellings, alphabet)], dtype=torch.long)


def coverage_at(lengths: torch.Tensor, k: int, token_counts: torch.Tensor | None = None) -> dict[str, float]:
    """Share of the vocabulary that spells with k heads, and (given corpus counts) of corpus tokens."""
    spellable = (lengths >= 1) & (lengths <= k)
    result = {"vocab_coverage": spellable.double().mean().item()}
    if token_counts is not None:
        counts = token_counts.to(torch.float64)
        result["corpus_coverage"] = (counts[spellable].sum() / counts.sum()).item()
    return result


class SpellingTable:
    """S[|V|, k] (symbol ids, PAD-filled), the spellable mask, and the string -> token id table."""

    def __init__(self, spellings: TokenSpellings, alphabet: Alphabet, k: int):
        check_charset(alphabet.kind.value, max(len(alphabet.units), MIN_CHARS), k)
        self.spellings, self.alphabet, self.k = spellings, alphabet, k
        vocab_size = len(spellings.pieces)
        table = torch.full((vocab_size, k), PAD, dtype=torch.long)
        lengths = torch.zeros(vocab_size, dtype=torch.long)
        self.string_to_id: dict[tuple[Unit, ...], int] = {}
        self._piece_to_id: dict[bytes, int] = {}
        for token_id, (units, token_symbols) in enumerate(_spellings_in(spellings, alphabet)):
            if token_symbols is None or len(token_symbols) > k:
                continue
            table[token_id, : len(token_symbols)] = torch.tensor(token_symbols)
            lengths[token_id] = len(token_symbols)
            if units is not None:  # end tokens spell as EOS, not as a string; duplicates: lowest id wins
                self.string_to_id.setdefault(units, token_id)
                self._piece_to_id.setdefault(spellings.pieces[token_id], token_id)
        self.table, self.lengths = table, lengths
        self.spellable = lengths > 0
        self._longest_piece = max(map(len, self._piece_to_id), default=0)

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @property
    def spelled(self) -> torch.Tensor:
        """[|V|] bool: the tokens whose strings are text, the spellable ones less the end tokens (which spell as
        EOS): what a string lookup or a vocabulary of strings keeps."""
        spelled = self.spellable.clone()
        spelled[list(self.spellings.end_ids)] = False
        return spelled

    def fingerprint(self) -> str:
        """A hash of the alphabet, k and the table: saved with a model, checked on load."""
        digest = hashlib.sha256(json.dumps(self.alphabet.to_json()).encode())
        digest.update(str(self.k).encode())
        digest.update(self.table.numpy().tobytes())
        return digest.hexdigest()

    def cover(self, text: bytes) -> list[int]:
        """Spellable token ids whose pieces concatenate to `text`: the longest spellable prefix, repeatedly.

        With a byte escape (or bytes) every single-byte token spells, so this fails only for a tokenizer
        without byte tokens, or where k is too small to spell one escaped byte (k = 1).
        """
        ids, stuck = _longest_prefixes(text, self._piece_to_id, self._longest_piece)
        if stuck is not None:
            fix = "" if self.alphabet.escape or self.alphabet.kind == CharsetKind.bytes else (
                "; charset.escape=true spells any byte")
            char = text[stuck:stuck + 4].decode("utf-8", errors="replace")[0]
            raise SegmentationError(
                f"no spellable token starts with {char!r}: it is not in the alphabet "
                f"({self.alphabet.kind.value}, {len(self.alphabet.units)} units, k={self.k}){fix}")
        return ids

    def cover_units(self, units: tuple[Unit, ...]) -> tuple[list[int], bool]:
        """Token ids for a decoded string: its longest prefix that spells a token, repeatedly (the decode step's
        rule, vocab_lookup.VocabLookup.cover). Returns (ids, False) where no token starts the rest."""
        ids, stuck = _longest_prefixes(units, self.string_to_id, self.k)
        return ids, stuck is None

    def coverage(self, token_counts: torch.Tensor | None = None) -> dict[str, float]:
        return coverage_at(self.lengths, self.k, token_counts)


def _longest_prefixes(sequence, ids_of: dict, longest: int) -> tuple[list[int], int | None]:
    """Ids of the longest prefix of `sequence` that `ids_of` knows, repeatedly; and where no known prefix starts
    the rest (None: all covered)."""
    ids, start = [], 0
    while start < len(sequence):
        length = next((n for n in range(min(longest, len(sequence) - start), 0, -1)
                       if sequence[start:start + n] in ids_of), 0)
        if not length:
            return ids, start
        ids.append(ids_of[sequence[start:start + length]])
        start += length
    return ids, None


def token_counts(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str], batch_size: int = 256) -> torch.Tensor:
    """How often each token id occurs when `texts` are tokenized (no special tokens added)."""
    counts = torch.zeros(len(tokenizer), dtype=torch.long)
    batch: list[str] = []

    def flush() -> None:
        ids = [i for row in tokenizer(batch, add_special_tokens=False)["input_ids"] for i in row]
        counts.add_(torch.bincount(torch.tensor(ids, dtype=torch.long), minlength=len(tokenizer)))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return counts
