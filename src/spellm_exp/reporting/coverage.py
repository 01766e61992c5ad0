"""Which k and alphabet spell the vocabulary and the corpus (results/coverage.{md,csv}).

For each tokenizer, alphabet and k: the share of the vocabulary that spells with k heads, the
share of the distillation corpus's tokens that do, and |Sigma|. The `chars` alphabets are
counted on the same corpus, as distillation counts them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from spellm_exp.core.charset import (
    TokenSpellings,
    build_alphabet,
    check_charset,
    coverage_at,
    spelled_lengths,
    token_counts,
)
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.provenance import provenance
from spellm_exp.reporting.tables import write_table
from spellm_exp.teachers.tokenizers import (
    OFFLINE_TOKENIZERS,
    check_offline_tokenizer,
    load_offline_tokenizer,
)

log = logging.getLogger(__name__)


def coverage_frame(cfg: DictConfig) -> pd.DataFrame:
    texts = corpus_texts(list(cfg.corpus.sources), cfg.corpus.max_chars_per_source)
    log.info("corpus: %d documents, %d characters", len(texts), sum(map(len, texts)))
    charsets = [("chars", size) for size in cfg.chars_sizes] + [(kind, None) for kind in cfg.other_charsets]
    rows = []
    for name in tqdm(cfg.tokenizers, desc="tokenizers"):
        tokenizer = load_offline_tokenizer(name, cfg.paths.cache_dir)
        spellings = TokenSpellings.from_tokenizer(tokenizer)
        counts = token_counts(tokenizer, texts)
        for kind, size in charsets:
            alphabet = build_alphabet(kind, size, spellings, counts)
            lengths = spelled_lengths(spellings, alphabet)
            for k in cfg.ks:
                rows.append({"tokenizer": name, "charset": kind if size is None else f"chars-{size}",
                             "sigma": alphabet.size, "k": k, **coverage_at(lengths, k, counts),
                             "vocab_size": len(spellings.pieces), "corpus_tokens": int(counts.sum())})
    return pd.DataFrame(rows)


def _wide(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    wide = frame.pivot_table(index=["tokenizer", "charset", "sigma"], columns="k", values=metric, sort=False)
    wide.columns = [f"k={k}" for k in wide.columns]
    return wide.reset_index().rename(columns={"sigma": "|Sigma|"})


def check_coverage_config(cfg: DictConfig) -> None:
    """Every check that needs no corpus or tokenizer: unknown tokenizers, missing packages, bad alphabets."""
    unknown = [t for t in cfg.tokenizers if t not in OFFLINE_TOKENIZERS]
    if unknown:
        raise ValueError(f"unknown tokenizers {unknown}; choose from {list(OFFLINE_TOKENIZERS)}.")
    for name in cfg.tokenizers:
        check_offline_tokenizer(name)
    for k in cfg.ks:
        for size in cfg.chars_sizes:
            check_charset("chars", size, k)


def write_coverage_table(cfg: DictConfig, command: str) -> list[Path]:
    check_coverage_config(cfg)
    started = provenance(OmegaConf.to_container(cfg, resolve=True))
    frame = coverage_frame(cfg)
    corpus = ", ".join(cfg.corpus.sources)
    notes = [
        f"Corpus: the distillation text ({corpus}; training splits only), "
        f"{'all of it' if cfg.corpus.max_chars_per_source is None else f'{cfg.corpus.max_chars_per_source:,} characters per source'}.",
        "Vocabulary coverage: share of all token ids whose spelling fits k heads in the alphabet "
        "(EOS and end-of-turn tokens spell as EOS; other special tokens never spell).",
        "Corpus coverage: share of the corpus's tokens (tokenized without special tokens) that spell.",
        "chars-N: the N most frequent characters of the corpus's token spellings, counted per tokenizer; "
        "|Sigma| = N + 2 (PAD, EOS), or fewer when the corpus has fewer distinct characters. bytes: UTF-8 bytes, every non-special token spells given enough heads.",
    ]
    return write_table(cfg.paths.results_dir, cfg.out_name, "Spelling coverage by k and alphabet", command, frame,
                       [("Vocabulary coverage", _wide(frame, "vocab_coverage")),
                        ("Corpus-token coverage", _wide(frame, "corpus_coverage"))], notes, started)
