"""The Table 3 sweep: jobs that skip when finished, start over when changed, and aggregate into one table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from spellm_exp.config import CONFIG_DIR
from spellm_exp.experiments import jobs, runs, sweep
from spellm_exp.reporting.table3 import (
    JobError,
    alphabet_label,
    collect,
    job_rows,
    plot,
    shown_table,
)
from spellm_exp.training.distill import ConfigError


# --- aggregation on fixture folders --------------------------------------------------------------
def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _fixture_job(sweep_dir: Path, name: str, k: int, kind: str, sigma: int, arc: float, piqa: float,
                 ratio: float) -> None:
    job = sweep_dir / name
    _write(job / "summary.json", {
        "teacher": {"description": "SmolLM2-135M-Instruct", "origin": "pretrained (dequantised GGUF)"},
        "k": k, "alphabet": {"kind": kind, "sigma": sigma},
        "coverage": {"vocab_coverage": 0.5, "corpus_coverage": 0.75},
        "val": {"val/kl": 0.25, "val/agree_teacher": 0.625, "val/head00/agree_teacher": 0.75,
                "val/head01/agree_teacher": 0.5, "val/head00/kl": 0.1, "val/agree_teacher_chars": 0.5,
                "val/head00/agree_teacher_chars": 0.75, "val/head01/agree_teacher_chars": 0.25}})
    _write(job / "eval" / "results.json", {"results": {"arc_easy": {"acc,none": 0.0, "acc_norm,none": arc},
                                                       "piqa": {"acc,none": piqa}}})
    _write(job / "bench.json", {"bound": {"ratio": 0.8}, "batches": [
        {"batch_size": 1, "step_ratio": ratio, "output_layer": {"teacher_ms": 8.0, "spellm_ms": 0.5},
         "teacher": {"runs": [{"step_s": 0.04}, {"step_s": 0.05}]},
         "spellm": {"non_vocab_share": 0.125, "runs": [{"step_s": 0.04}, {"step_s": 0.03}]}}]})


@pytest.fixture
def fixture_sweep(tmp_path):
    sweep_dir = tmp_path / "sweep"
    _write(sweep_dir / "teacher" / "results.json", {"results": {"arc_easy": {"acc,none": 0.0, "acc_norm,none": 0.5},
                                                                "piqa": {"acc,none": 0.75}}})
    _fixture_job(sweep_dir, "charset.size=64,k=8", 8, "chars", 66, arc=0.25, piqa=0.5, ratio=0.75)
    _fixture_job(sweep_dir, "charset=bytes,k=4", 4, "bytes", 258, arc=0.5, piqa=0.5, ratio=0.5)
    return sweep_dir


def test_aggregation_turns_job_folders_into_the_table(fixture_sweep):
    frame, heads, broken = collect(fixture_sweep)
    assert broken == {}
    assert frame["job"].tolist() == ["charset.size=64,k=8", "charset=bytes,k=4"]  # by |Sigma|, alphabet, k
    first = frame.iloc[0]
    assert (first["k"], first["alphabet"], first["sigma"]) == (8, "chars-64", 66)
    assert first["accuracy"] == pytest.approx((0.25 + 0.5) / 2)  # acc_norm for ARC, acc for PIQA
    assert first["teacher_accuracy"] == pytest.approx((0.5 + 0.75) / 2)
    assert first["accuracy_diff"] == pytest.approx(0.375 - 0.625)
    assert (first["step_ratio"], first["bound"], first["non_vocab_share"]) == (0.75, 0.8, 0.125)
    assert first["step_ratio_best"] == pytest.approx(0.03 / 0.04)  # each side's fastest run
    assert (first["head_ms_teacher"], first["head_ms_spellm"]) == (8.0, 0.5)
    assert (first["val_kl"], first["agree_teacher"], first["vocab_coverage"]) == (0.25, 0.625, 0.5)
    assert frame.iloc[1]["accuracy"] == pytest.approx(0.5)
    assert heads[heads["job"] == "charset=bytes,k=4"].sort_values("head")["agree_teacher"].tolist() == [0.75, 0.5]
    assert heads[heads["job"] == "charset=bytes,k=4"].sort_values("head")["agree_teacher_chars"].tolist() == [0.75, 0.25]
    assert first["agree_teacher_chars"] == 0.5
    shown = shown_table(frame)
    assert shown.loc[0, "acc - teacher"] == pytest.approx(-25.0) and shown.loc[1, "alphabet"] == "bytes"


def test_a_broken_job_is_named_and_the_others_still_aggregate(fixture_sweep):
    _write(fixture_sweep / "charset=bytes,k=4" / "summary.json", "{not json")
    _fixture_job(fixture_sweep, "k=12", 12, "chars", 34, arc=0.5, piqa=0.5, ratio=0.5)
    (fixture_sweep / "k=12" / "bench.json").unlink()
    frame, _, broken = collect(fixture_sweep)
    assert frame["job"].tolist() == ["charset.size=64,k=8"]
    assert set(broken) == {"charset=bytes,k=4", "k=12"}
    assert "summary.json is not valid JSON" in broken["charset=bytes,k=4"]
    assert "bench.json is missing" in broken["k=12"]


def test_a_missing_sweep_folder_names_the_fix(tmp_path):
    with pytest.raises(JobError, match="make reproduce-table3"):
        collect(tmp_path / "nothing")


def test_alphabet_labels():
    assert alphabet_label("chars", 34) == "chars-32" and alphabet_label("bytes", 258) == "bytes"
    assert alphabet_label("chars", 202, size_asked=256) == "chars-256"  # the corpus has fewer characters


# --- one job in process: skip, resume, start over ------------------------------------------------
def test_a_finished_job_is_skipped_and_a_changed_one_starts_over(cache_dir, tmp_path, monkeypatch):
    job_dir = tmp_path / "job"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=[
            "experiment=table3", "debug=sweep_tiny", "k=2", "charset.size=16", f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}", f"paths.features_dir={tmp_path}/features"])
        first = sweep.run_job(cfg, job_dir)
        assert first["status"] == "done" and set(first["metrics"]) >= {"accuracy", "step_ratio", "val_kl"}
        assert (tmp_path / "sweeps" / "table3-quick" / "teacher" / "results.json").exists()

        monkeypatch.setattr(runs, "distil", lambda *a: pytest.fail("a finished job must not train again"))
        assert sweep.run_job(cfg, job_dir) == first

        summary_mtime = (job_dir / "summary.json").stat().st_mtime_ns
        monkeypatch.undo()
        monkeypatch.setattr(jobs, "code_version", lambda: "another-commit")
        again = sweep.run_job(cfg, job_dir)
        assert again["fingerprint"]["code"] == "another-commit"
        assert (job_dir / "summary.json").stat().st_mtime_ns != summary_mtime


def test_a_diverged_job_is_recorded_as_such_and_left_out_of_the_table_with_the_reason(cache_dir, tmp_path):
    job_dir = tmp_path / "job"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=[
            "experiment=table3", "debug=sweep_tiny", "k=2", "charset.size=16", "train.lr=1e38",
            f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}"])
        record = sweep.run_job(cfg, job_dir)
    assert record["status"] == "diverged" and "training diverged at step 1" in record["error"]
    assert json.loads((job_dir / "job.json").read_text())["status"] == "diverged"
    # its step-1 export is gone, and nothing was scored or timed
    assert not any((job_dir / name).exists() for name in ("spellm", "summary.json", "eval", "bench.json"))
    with pytest.raises(JobError, match=r"its training diverged \(training diverged at step 1"):
        job_rows(job_dir, {})


def test_bad_sweep_overrides_fail_before_any_model_loads(cache_dir, tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=["experiment=table3", "sweep.eval.tasks=[no_such_task]"])
        with pytest.raises(ConfigError, match="no_such_task"):
            sweep.run_job(cfg, tmp_path)
        cfg = compose(config_name="sweep", overrides=["experiment=table3", "train.trainable=lora",
                                                      "train.cache_features=false"])
        with pytest.raises(ConfigError, match="train.trainable=heads"):
            sweep.run_job(cfg, tmp_path)
        cfg = compose(config_name="sweep", overrides=["experiment=table3", "trainer=ddp", "trainer.devices=2"])
        with pytest.raises(ConfigError, match="one device; use trainer.devices=1"):
            sweep.run_job(cfg, tmp_path)


# --- a tiny multirun end to end, with wandb offline ----------------------------------------------
def _multirun(tmp_path, cache_dir, *extra):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_SILENT="true", NETRC=str(tmp_path / "no-netrc"))
    result = subprocess.run(
        [sys.executable, "-m", "spellm_exp.sweep", "-m", "experiment=table3", "debug=sweep_tiny", "k=2,3",
         "charset.size=16", f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}",
         f"paths.features_dir={tmp_path}/features", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr + result.stdout


def test_a_tiny_multirun_runs_end_to_end_logs_to_wandb_offline_and_aggregates(cache_dir, tmp_path):
    _multirun(tmp_path, cache_dir, "logger=wandb")
    sweep_dir = tmp_path / "sweeps" / "table3-quick"
    jobs = ["charset.size=16,debug=sweep_tiny,k=2", "charset.size=16,debug=sweep_tiny,k=3"]
    for job, k in zip(jobs, (2, 3)):
        record = json.loads((sweep_dir / job / "job.json").read_text())
        assert record["status"] == "done" and record["fingerprint"]["config"]["k"] == k
        runs = list((sweep_dir / job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, f"one offline wandb run per job, got {runs}"
        log = next(runs[0].glob("run-*.wandb")).read_bytes()
        for key in (b"table3-quick", b"charset", b"cache_features", b"final/accuracy", b"final/step_ratio"):
            assert key in log, key

    frame, heads, broken = collect(sweep_dir)
    assert broken == {} and frame["k"].tolist() == [2, 3]
    assert sorted(heads.groupby("k")["head"].count().tolist()) == [2, 3]
    assert heads["agree_teacher_chars"].notna().any()  # pooled per head by the current code
    plots = plot(frame, heads, tmp_path)
    assert [p.name for p in plots] == ["table3_accuracy_vs_k.png", "table3_step_ratio_vs_k.png",
                                       "table3_head_agreement.png", "table3_tradeoff.png"]
    assert all(p.stat().st_size > 10_000 for p in plots)

    # a re-run skips both jobs: nothing is trained, scored or timed again
    stamps = {job: (sweep_dir / job / "bench.json").stat().st_mtime_ns for job in jobs}
    log = _multirun(tmp_path, cache_dir)
    assert log.count("finished with the same config and code") == 2
    assert stamps == {job: (sweep_dir / job / "bench.json").stat().st_mtime_ns for job in jobs}
