"""String -> token id on the device: the heads' greedy symbols become the next input id by a tensor lookup,
so a vocabulary string never leaves the device (issue 17; decoding.SpeLLMHead uses it).

Each spellable token's row of the spelling table S[|V|, k] gets a 62-bit key, two polynomial hashes of its
symbols modulo primes below 2^31; the keys are sorted once. A step hashes its [n, k] greedy symbols the same
way, finds each key with `searchsorted` and accepts the token only if its table row equals the symbols, so a
hash collision can only make a vocabulary string look like a non-vocabulary one (which the host then resolves
as any other), never give a wrong id. Where several tokens spell the same string the lowest id wins, as in
`SpellingTable.string_to_id`.

`cover` is the decode step's rule for the next input id, with no host round-trip: the longest prefix of the
string that is a vocabulary token, the rest kept for the next steps (a vocabulary string is its own longest
prefix). `SpellingTable.cover_units` is the same rule on the host.
"""

from __future__ import annotations

import torch
from torch import nn

from spellm_exp.core.charset import EOS, PAD, SpellingTable

_PRIMES = (2_147_483_647, 2_147_483_629)  # moduli below 2^31: symbol x power < 2^40, a sum of k < 2^44
_BASES = (1_000_003, 999_983)


def hash_powers(k: int) -> torch.Tensor:
    """[2, k]: the powers of the two hashes' bases, modulo their primes."""
    rows = []
    for base, prime in zip(_BASES, _PRIMES):
        powers = [1]
        for _ in range(k - 1):
            powers.append(powers[-1] * base % prime)
        rows.append(powers)
    return torch.tensor(rows, dtype=torch.long)


def string_keys(symbols: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """[..., k] symbol ids -> [...] int64 keys (two 31-bit polynomial hashes side by side); contiguous, as
    `searchsorted` wants them (it would copy them itself, with a warning)."""
    return prefix_keys(symbols, powers)[..., -1].contiguous()


def prefix_keys(symbols: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """[..., k] -> [..., k]: the keys of each prefix symbols[..., :j + 1] padded with PAD (symbol 0, no term), the
    last one the whole string's (string_keys)."""
    halves = [(symbols * powers[i]).cumsum(-1) % prime for i, prime in enumerate(_PRIMES)]
    return halves[0] * (1 << 31) + halves[1]


def normalise(symbols: torch.Tensor) -> torch.Tensor:
    """The string a greedy row spells: every symbol after its first PAD or EOS becomes PAD (a leading EOS
    stays, alone: the end token)."""
    ended = ((symbols == PAD) | (symbols == EOS)).long().cumsum(-1) > 0
    ended[:, 0] = False
    return torch.where(ended, torch.full_like(symbols, PAD), symbols)


class VocabLookup(nn.Module):
    """Sorted string keys of the spellable vocabulary and their token ids, as buffers (they follow `.to`)."""

    def __init__(self, spelling: SpellingTable):
        super().__init__()
        table = spelling.table
        self.register_buffer("powers", hash_powers(table.shape[1]), persistent=False)
        # spelled strings only: end tokens spell as EOS and are not looked up (the EOS row is the end)
        ids = torch.nonzero(spelling.spelled).flatten()
        keys = self.keys(table[ids])
        order = torch.argsort(keys, stable=True)  # ids ascend within equal keys: the lowest id comes first
        keys, ids = keys[order], ids[order]
        first = torch.ones_like(keys, dtype=torch.bool)
        first[1:] = keys[1:] != keys[:-1]
        self.register_buffer("sorted_keys", keys[first], persistent=False)
        self.register_buffer("sorted_ids", ids[first], persistent=False)
        self.register_buffer("table", table, persistent=False)  # shared on the CPU, copied by `.to(device)`
        self.eos_id = spelling.spellings.eos_id

    def keys(self, symbols: torch.Tensor) -> torch.Tensor:
        """[n, k] symbol ids -> [n] int64 keys."""
        return string_keys(symbols, self.powers)

    def forward(self, symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy [n, k] symbols -> (token id [n], in_vocab [n]) on the device: the end token for a leading EOS,
        the token whose spelling the string is, or -1 and False for a string that is no vocabulary token."""
        string = normalise(symbols)
        position = torch.searchsorted(self.sorted_keys, self.keys(string)).clamp(max=self.sorted_keys.numel() - 1)
        ids = self.sorted_ids[position]
        found = (self.table[ids] == string).all(-1)
        end = string[:, 0] == EOS
        ids = torch.where(end, torch.full_like(ids, self.eos_id), torch.where(found, ids, torch.full_like(ids, -1)))
        return ids, found | end

    def cover(self, strings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[n, k] strings -> (the id of each one's longest vocabulary prefix [n], the symbols it spells [n]).

        A leading EOS is the end token and takes the whole row; a string no token starts gives length 0 (id -1).
        PAD is symbol 0, so the key of every PAD-filled prefix is a partial sum of the string's hash: all k prefixes
        are looked up at once, from one cumulative sum per hash."""
        string = normalise(strings)
        k = string.shape[1]
        keys = prefix_keys(string, self.powers)  # [n, k]: the prefix of length j + 1
        position = torch.searchsorted(self.sorted_keys, keys).clamp(max=self.sorted_keys.numel() - 1)
        ids = self.sorted_ids[position]
        lengths = torch.arange(1, k + 1, device=string.device)
        prefixes = torch.where(lengths[None, None, :] <= lengths[None, :, None], string[:, None, :], PAD)  # [n, k, k]
        end = string[:, 0] == EOS
        found = (self.table[ids] == prefixes).all(-1) & ~end.unsqueeze(1)
        longest = torch.where(found, lengths, 0).max(-1).values
        ids = ids.gather(1, (longest - 1).clamp(min=0)[:, None]).squeeze(1)
        ids = torch.where(end, torch.full_like(ids, self.eos_id), torch.where(longest > 0, ids, -1))
        return ids, torch.where(end, k, longest)


def drop_prefix(strings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[n, k] strings without their first `lengths` [n] symbols, PAD-filled on the right."""
    k = strings.shape[1]
    source = torch.arange(k, device=strings.device)[None, :] + lengths[:, None]
    return torch.where(source < k, strings.gather(1, source.clamp(max=k - 1)), PAD)
