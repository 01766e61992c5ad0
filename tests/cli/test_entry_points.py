"""Hydra entry points run as a user runs them: `python -m spellm_exp.<name>` in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir

from spellm_exp.config import CONFIG_DIR, model_config
from spellm_exp.teachers import MODELS, ModelConfig, TeacherConfigError, load_teacher

CONF = Path(CONFIG_DIR)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_config_path_resolves_from_the_installed_package(tmp_path):
    # run from elsewhere: conf/ must be found through the editable install, not the cwd
    result = _run("spellm_exp.describe", "--cfg", "job", "model=tiny_gemma", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    job = yaml.safe_load(result.stdout)
    assert job["model"]["name"] == "tiny_gemma"
    assert job["model"]["init"] == "pretrained"


def test_describe_writes_what_the_teacher_is(tmp_path, cache_dir):
    result = _run("spellm_exp.describe", "model=tiny_qwen", "max_new_tokens=3",
                  f"model.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "teacher.json").read_text())
    assert record["teacher"]["name"] == "tiny_qwen"
    assert record["teacher"]["origin"] == "random init"
    assert record["teacher"]["vocab_size"] == 50_280
    assert set(record["provenance"]) >= {"git_sha", "date", "device", "versions", "config"}
    assert "tiny_qwen: tiny Qwen2" in result.stdout


def test_offline_hub_model_fails_before_loading(tmp_path):
    result = _run("spellm_exp.describe", "model=mistral", cwd=tmp_path)
    assert result.returncode != 0
    assert "model.path=/path/to/folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_override_value_is_rejected_by_the_schema(tmp_path):
    result = _run("spellm_exp.describe", "model.init=pretrianed", cwd=tmp_path)
    assert result.returncode != 0
    assert "expected one of [pretrained, random]" in result.stderr


@pytest.mark.parametrize("stem", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_model_config_composes_to_a_known_model(stem):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="describe", overrides=[f"model={stem}"])
    if stem == "local":
        with pytest.raises(TeacherConfigError, match=r"model=local needs .*model\.path="):
            load_teacher(model_config(cfg))
        return
    model = model_config(cfg)
    assert isinstance(model, ModelConfig)
    assert model.name == stem and model.name in MODELS
    assert model.cache_dir == cfg.paths.cache_dir and model.cache_dir.endswith("spellm_exp")


def test_coverage_writes_tables_that_match_a_direct_computation(tmp_path, cache_dir):
    import pandas as pd

    from spellm_exp.core.charset import (
        Alphabet,
        SpellingTable,
        TokenSpellings,
        token_counts,
    )
    from spellm_exp.data.corpus import corpus_texts
    from spellm_exp.teachers.tokenizers import load_offline_tokenizer

    result = _run("spellm_exp.coverage", "tokenizers=[gpt-neox]", "ks=[4,16]", "chars_sizes=[8]",
                  "corpus.sources=[shakespeare]", "corpus.max_chars_per_source=5000",
                  f"paths.cache_dir={cache_dir}", f"paths.results_dir={tmp_path}/results",
                  f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(tmp_path / "results" / "coverage.csv")
    assert list(frame.charset) == ["chars-8", "chars-8", "bytes", "bytes"] and list(frame.k) == [4, 16, 4, 16]

    tokenizer = load_offline_tokenizer("gpt-neox", cache_dir)
    counts = token_counts(tokenizer, corpus_texts(["shakespeare"], 5000))
    expected = SpellingTable(TokenSpellings.from_tokenizer(tokenizer), Alphabet.bytes_(), 16).coverage(counts)
    row = frame[(frame.charset == "bytes") & (frame.k == 16)].iloc[0]
    assert row.vocab_coverage == pytest.approx(expected["vocab_coverage"])
    assert row.corpus_coverage == pytest.approx(expected["corpus_coverage"])
    assert row.sigma == 258 and frame.sigma.iloc[0] == 10
    markdown = (tmp_path / "results" / "coverage.md").read_text()
    assert "python -m spellm_exp.coverage tokenizers=[gpt-neox]" in markdown and "git SHA" in markdown


def test_bench_distill_writes_side_by_side_figures_and_keeps_other_devices_rows(tmp_path, cache_dir):
    import pandas as pd

    results = tmp_path / "results"

    def bench() -> pd.DataFrame:
        result = _run("spellm_exp.bench_distill", "models=[tiny_llama]", "ks=[2,8]", "batch_size=2", "block_size=16",
                      "warmup=0", "repeats=2", "corpus_chars=20000", f"paths.cache_dir={cache_dir}",
                      f"paths.results_dir={results}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        return pd.read_csv(results / "distill_throughput.csv")

    ours = bench()
    assert list(ours.model) == ["tiny_llama", "tiny_llama"] and list(ours.k) == [2, 8]
    assert (ours.sigma == 258).all() and (ours.precision == "32-true").all() and ours.distill_mfu.isna().all()
    assert (ours.origin == "random init").all() and (ours.batch_tokens == 32).all()
    assert (ours.throughput_ratio > 0).all() and (ours.teacher_tokens_per_s > 0).all()
    ratio = ours.distill_tokens_per_s / ours.teacher_tokens_per_s
    assert ratio.tolist() == pytest.approx(ours.throughput_ratio.tolist())

    # an earlier GPU run's row stays; an earlier row of this device and precision is replaced
    earlier = pd.DataFrame([{"model": "llama31_8b", "origin": "random init", "device": "NVIDIA H100 80GB HBM3",
                             "precision": "bf16-mixed", "k": 16, "distill_mfu": 0.41, "git_sha": "a" * 40},
                            {"model": "stale", "origin": "random init", "device": ours.device[0],
                             "precision": "32-true", "k": 16, "distill_mfu": None, "git_sha": "b" * 40}])
    pd.concat([earlier, ours]).to_csv(results / "distill_throughput.csv", index=False)
    again = bench()
    assert list(again.model) == ["llama31_8b", "tiny_llama", "tiny_llama"] and list(again.k) == [16, 2, 8]
    markdown = (results / "distill_throughput.md").read_text()
    assert "## NVIDIA H100 80GB HBM3, bf16-mixed" in markdown and f"## {ours.device[0]}, 32-true" in markdown


def test_model_flops_per_token_of_a_distillation_step(tiny_teacher):
    from spellm_exp.benchmarks.distill import (
        peak_flops,
        resolve_precision,
        step_flops_per_token,
    )

    model = tiny_teacher("tiny_llama").model  # 2 layers, d=64, 4 heads of 16, |V| 49,152, tied
    backbone = sum(p.numel() for p in model.parameters()) - 49_152 * 64
    flops = step_flops_per_token(model, context=32, k=4, sigma=10)
    assert flops["teacher"] == 2 * backbone + 2 * 2 * 4 * 16 * 32 + 2 * 64 * 49_152
    assert flops["distill"] - flops["teacher"] == 4 * 64 * 4 * 10
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None
    assert resolve_precision("auto", torch.device("cpu")) == "32-true"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16-mixed"


def test_evaluate_writes_results_samples_and_metrics(tmp_path, cache_dir):
    import pandas as pd

    result = _run("spellm_exp.evaluate", "variant=teacher", "model=tiny_llama", "tasks=[arc_easy,lambada_openai]",
                  "limit=3", f"paths.cache_dir={cache_dir}", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {("arc_easy", "acc_norm"), ("lambada_openai", "perplexity")} <= set(zip(metrics.task, metrics.metric))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["spellm_exp"]["variant"] == "teacher" and "git_sha" in results["spellm_exp"]["provenance"]
    assert len((tmp_path / "run" / "samples.jsonl").read_text().splitlines()) == 6
    assert "fatal: not a git repository" not in result.stderr  # lm-eval's `git describe` in a cwd outside git
    assert results["git_hash"] == results["spellm_exp"]["provenance"]["git_sha"]  # our code's commit instead


@pytest.mark.parametrize("overrides,message", [
    (["run_dir=/no/such/run"], "run_dir=/no/such/run does not exist"),
    (["tasks=[arc_easy,mmlu_pro]"], "Unknown task(s) ['mmlu_pro']"),
    (["variant=spellm"], "variant=spellm needs run_dir="),
])
def test_evaluate_bad_input_fails_with_the_fix(overrides, message, tmp_path):
    result = _run("spellm_exp.evaluate", *overrides, cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr


def test_evaluate_a_broken_checkpoint_fails_in_one_line_naming_the_file(tmp_path, tiny_teacher):
    from spellm_exp.core.charset import Alphabet
    from spellm_exp.core.spellm import SpeLLM

    SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4).save(tmp_path / "run" / "spellm")
    (tmp_path / "run" / "spellm" / "spellm.json").write_text("")
    result = _run("spellm_exp.evaluate", f"run_dir={tmp_path}/run", "tasks=[arc_easy]", "limit=2", cwd=tmp_path)
    assert result.returncode == 1
    assert "spellm.json is not valid JSON" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "eval").exists()


def test_a_missing_model_folder_fails_in_one_line(tmp_path):
    result = _run("spellm_exp.describe", "model=local", "model.path=/nonexistent", cwd=tmp_path)
    assert result.returncode == 1
    assert "model.path=/nonexistent does not exist" in result.stderr and "Traceback" not in result.stderr


def test_schemas_are_not_choices_of_their_config_groups(tmp_path):
    for group in ("model", "charset", "heads", "data"):
        result = _run("spellm_exp.train", "--cfg", "job", f"{group}={group}_schema", cwd=tmp_path)
        assert result.returncode != 0 and f"Could not find '{group}/{group}_schema'" in result.stderr


# every command the README documents: (module, the config key that `--cfg job` must show)
HYDRA_COMMANDS = {"train": "k", "sweep": "sweep", "evaluate": "variant", "bench": "batch_sizes",
                  "bench_distill": "ks", "memory_plan": "architectures", "coverage": "tokenizers",
                  "describe": "prompt", "table1": "profiles", "table2": "entries", "table3": "sweep_dir",
                  "ablation": "variants", "gpu_bundle": "out_dir", "list_rank": "ranks", "quickstart": "head_type"}


@pytest.mark.parametrize("command", sorted(HYDRA_COMMANDS))
def test_every_documented_command_composes_its_config(command, tmp_path):
    result = _run(f"spellm_exp.{command}", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    job = yaml.safe_load(result.stdout)
    assert HYDRA_COMMANDS[command] in job and "paths" in job


@pytest.mark.parametrize("command", ["table1", "table2"])
def test_table_configs_take_a_profile_by_name_without_the_training_keys(command, tmp_path):
    result = _run(f"spellm_exp.{command}", "profile=full", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    job = yaml.safe_load(result.stdout)
    assert job["profile"] == "full" and "full" in job["profiles"]
    assert not {"trainer", "data", "checkpoint"} & set(job)
    result = _run(f"spellm_exp.{command}", "trainer.max_steps=3", "--cfg", "job", cwd=tmp_path)
    assert result.returncode != 0 and "Could not override 'trainer.max_steps'" in result.stderr


@pytest.mark.parametrize("command,override,message", [
    ("bench", "batch_sizes=[one]", "Error merging override batch_sizes=[one]"),
    ("table2", "run_bench=maybe", "Error merging override run_bench=maybe"),
    ("sweep", "sweep.eval.limt=3", "Could not override 'sweep.eval.limt'"),
    ("memory_plan", "k=sixteen", "Error merging override k=sixteen"),
])
def test_a_bad_key_or_value_fails_in_hydras_composition(command, override, message, tmp_path):
    result = _run(f"spellm_exp.{command}", override, "--cfg", "job", cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr


def test_the_harness_cli_and_the_results_index_run(tmp_path):
    result = _run("spellm_exp.lm_eval", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--model" in result.stdout
    (tmp_path / "results").mkdir()
    result = _run("spellm_exp.results_index", str(tmp_path / "results"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results" / "README.md").read_text().startswith("# results/")


def test_console_scripts_are_the_same_commands(tmp_path):
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("spellm-")}
    assert scripts["spellm-train"] == "spellm_exp.cli.train:main" and len(scripts) == 16
    assert scripts["spellm-list-rank"] == "spellm_exp.cli.list_rank:main"
    script = Path(sys.executable).parent / "spellm-describe"
    result = subprocess.run([str(script), "--cfg", "job", "model=tiny_gemma"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["model"]["name"] == "tiny_gemma"
