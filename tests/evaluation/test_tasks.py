"""Offline lm-eval tasks: generated YAMLs load local files only, and both scorers agree on them."""

import socket

import lm_eval
import pytest
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager, get_task_dict

from spellm_exp.evaluation.harness import SpeLLMHarnessLM
from spellm_exp.evaluation.tasks import TASKS, UnknownTaskError, write_task_yamls

EXPECTED_DOCS = {"hellaswag": 10_042, "piqa": 1_838, "arc_easy": 570, "arc_challenge": 299, "winogrande": 1_267,
                 "boolq": 3_270, "openbookqa": 500, "sciq": 1_000, "copa": 100, "lambada_openai": 5_153,
                 "wikipedia_bpb": 801}


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    folder = write_task_yamls(tmp_path_factory.mktemp("tasks"))
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_every_task_loads_its_local_documents(task_manager, no_network):
    tasks = get_task_dict(list(TASKS), task_manager)
    for name, expected in EXPECTED_DOCS.items():
        assert len(list(tasks[name].eval_docs)) == expected, name


def test_generated_yamls_use_absolute_local_paths(tmp_path):
    import yaml

    folder = write_task_yamls(tmp_path, ["boolq", "lambada_openai"])
    boolq = yaml.safe_load((folder / "boolq.yaml").read_text())
    assert boolq["include"].startswith("/") and boolq["include"].endswith("super_glue/boolq/default.yaml")
    assert all(p.startswith("/") for p in boolq["dataset_kwargs"]["data_files"]["validation"])
    lambada = yaml.safe_load((folder / "lambada_openai.yaml").read_text())
    assert lambada["dataset_path"] == "json" and lambada["test_split"] == "test"


def test_unknown_task_is_a_clear_error(tmp_path):
    with pytest.raises(UnknownTaskError, match=r"Unknown task\(s\) \['mmlu_pro'\]; the offline tasks are: hellaswag"):
        write_task_yamls(tmp_path, ["hellaswag", "mmlu_pro"])


def test_task_accuracies_match_lm_eval_hflm(tiny_teacher, task_manager, no_network):
    teacher = tiny_teacher("tiny_llama")
    tasks = ["arc_easy", "boolq", "lambada_openai"]
    ours = lm_eval.simple_evaluate(model=SpeLLMHarnessLM(variant="teacher", teacher=teacher), tasks=tasks,
                                   task_manager=task_manager, limit=6, bootstrap_iters=0)
    peer = lm_eval.simple_evaluate(model=HFLM(pretrained=teacher.model, tokenizer=teacher.tokenizer, batch_size=6),
                                   tasks=tasks, task_manager=task_manager, limit=6, bootstrap_iters=0)
    assert {"acc,none", "acc_norm,none"} <= set(peer["results"]["arc_easy"])
    assert {"acc,none", "perplexity,none"} <= set(peer["results"]["lambada_openai"])
    for task in tasks:
        for metric, value in peer["results"][task].items():
            if isinstance(value, float) and "stderr" not in metric:
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-4, abs=1e-4), (task, metric)
