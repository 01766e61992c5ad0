"""The runtime bench: the shared decode loop, the bound, the JSON record, Table 2's builder, early errors."""

import json
import statistics
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

import spellm_exp.benchmarks.decode as bench
from spellm_exp.benchmarks.decode import Bound, check_bench_config, paired_ratios
from spellm_exp.benchmarks.measure import BenchConfigError, nonembedding_params
from spellm_exp.config import CONFIG_DIR
from spellm_exp.core.decoding import SpeLLMHead, TeacherHead
from spellm_exp.reporting.table2 import average_reductions, table_frames
from spellm_exp.teachers.architectures import REAL_SIZE

FAST = ["decode_steps=3", "warmup=0", "repeats=1", "layer_repeats=2", "prompt_tokens=16", "threads=1"]


def _bench_cfg(cache_dir, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="bench", overrides=["model=tiny_llama", f"paths.cache_dir={cache_dir}", *FAST,
                                                       *overrides])


def test_bound_matches_a_hand_computation():
    # SmolLM2-135M: 30 layers of (4 attention matrices 576x576, 576x192 twice, MLP 3 x 576x1536, 2 norms) + final norm
    layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536 + 2 * 576
    p_nonembedding = 30 * layer + 576
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(REAL_SIZE["smollm2_135m"]())
    assert nonembedding_params(model) == p_nonembedding
    bound = Bound(p_nonembedding, 49_152, 576, k=16, sigma=66)
    expected = (p_nonembedding + 16 * 66 * 576) / (p_nonembedding + 49_152 * 576)
    assert bound.ratio == pytest.approx(expected, rel=1e-12)
    assert bound.ratio == pytest.approx(0.80, abs=0.01)  # method.md: "about 0.80"


def test_gemma_bound_is_about_038():
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(REAL_SIZE["gemma3_270m"]())
    assert Bound(nonembedding_params(model), 262_144, 640, k=16, sigma=258).ratio == pytest.approx(0.38, abs=0.01)


@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_teacher_and_spellm_go_through_the_same_loop(backend, cache_dir, monkeypatch):
    cfg = _bench_cfg(cache_dir, "batch_sizes=[2]", f"decode.backend={backend}")
    device = check_bench_config(cfg)
    spellm, source = bench.build_spellm(cfg, device)
    assert source.startswith("heads at init")
    seen = []
    real_generate = bench.Decoder.generate

    def spy(decoder, prompts, **kwargs):
        seen.append((type(decoder.head), decoder.causal_lm, decoder.backend, id(decoder)))
        return real_generate(decoder, prompts, **kwargs)

    monkeypatch.setattr(bench.Decoder, "generate", spy)
    result = bench.bench_batch(spellm, bench.benchmark_prompts(spellm.tokenizer, 2, cfg.prompt_tokens), cfg, device)
    assert {kind for kind, *_ in seen} == {TeacherHead, SpeLLMHead}
    assert all(lm is spellm.causal_lm for _, lm, *_ in seen)  # one backbone object for both
    assert {b for _, _, b, _ in seen} == {backend}
    assert len({d for *_, d in seen}) == 2  # one decoder per head, reused by every run (compiled once)
    pairs = [s["step_s"] / t["step_s"] for t, s in zip(result["teacher"]["runs"], result["spellm"]["runs"])]
    assert result["paired_ratios"] == pytest.approx(pairs) and len(pairs) == cfg.repeats
    assert result["step_ratio"] == pytest.approx(statistics.median(pairs))  # the median of the repeats' pairs
    assert result["spellm"]["runs"][0]["steps"] == 3 and result["spellm"]["runs"][0]["head_steps"] == 3


def test_bench_writes_a_well_formed_record(cache_dir, tmp_path):
    out = tmp_path / "record.json"
    result = subprocess.run(
        [sys.executable, "-m", "spellm_exp.bench", "model=tiny_llama", f"paths.cache_dir={cache_dir}", *FAST,
         "batch_sizes=[1,2]", f"hydra.run.dir={tmp_path}/run", f"out_file={out}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert json.loads((tmp_path / "run" / "bench.json").read_text()) == record
    assert record["device"] == "cpu" and record["dtype"] == "float32" and record["init"] == "random init"
    assert set(record["provenance"]) >= {"git_sha", "date", "device", "versions", "config"}
    assert record["spellm"]["k"] == 16 and record["spellm"]["alphabet"] == "bytes-256"
    assert [b["batch_size"] for b in record["batches"]] == [1, 2]
    for batch in record["batches"]:
        for variant in ("teacher", "spellm"):
            summary = batch[variant]
            assert summary["step_ms"] > 0 and summary["prefill_ms"] > 0 and summary["chars_per_s"] > 0
            assert len(summary["runs"]) == 1 and summary["runs"][0]["head_steps"] >= 1
        for variant in ("teacher", "spellm"):  # EOS ignored: a fixed number of backbone steps
            assert batch[variant]["runs"][0]["steps"] == 3
        assert set(batch["output_layer"]) >= {"teacher_ms", "spellm_ms", "spellm_host_ms", "host_share_of_spellm_step",
                                              "teacher_cold_ms", "spellm_cold_ms", "cache_eviction_mb"}
        assert batch["output_layer"]["teacher_cold_ms"] > 0 and batch["output_layer"]["spellm_cold_ms"] > 0
    assert record["spellm"]["decode"] == {"mode": "free", "backend": "eager", "compiler": "inductor"}
    bound = record["bound"]
    assert bound["ratio"] == pytest.approx(Bound(*(bound[k] for k in
                                                   ("p_nonembedding", "vocab_size", "hidden_size", "k", "sigma"))).ratio)


@pytest.mark.parametrize("kind", ["mixture", "autoregressive", "shortlist"])
def test_bench_times_another_head_type_and_bounds_it_by_its_parameters(kind, cache_dir):
    cfg = _bench_cfg(cache_dir, f"heads={kind}", "batch_sizes=[1]")
    record = bench.run_bench(cfg)
    assert record["spellm"]["head_type"]["kind"] == kind
    params = record["spellm"]["head_params"]
    bound = record["bound"]
    assert bound["head_params"] == params and params > 16 * 258 * bound["hidden_size"]
    assert bound["ratio"] == pytest.approx((bound["p_nonembedding"] + params)
                                           / (bound["p_nonembedding"] + bound["vocab_size"] * bound["hidden_size"]))
    assert record["batches"][0]["spellm"]["step_ms"] > 0


def test_bench_times_a_shortlist_that_scores_seen_tokens(cache_dir):
    # more output-layer repeats than a decode loop's 64 slots: the timing starts the seen tokens with room for them
    cfg = _bench_cfg(cache_dir, "heads=shortlist", "heads.context_tokens=true", "batch_sizes=[2]", "layer_repeats=80")
    record = bench.run_bench(cfg)
    assert record["spellm"]["head_type"]["context_tokens"] is True
    batch = record["batches"][0]
    assert batch["spellm"]["step_ms"] > 0 and batch["output_layer"]["spellm_ms"] > 0
    assert batch["output_layer"]["spellm_cold_ms"] > 0  # twice the repeats' steps, hot and cold, found room


@pytest.mark.parametrize("overrides,message", [
    (["batch_sizes=[0]"], r"batch_sizes=\[0\]: every batch size must be >= 1"),
    (["device=tpu"], r"device=tpu is unknown; use one of \('auto', 'cpu', 'cuda'\)"),
    (["decode_steps=0"], r"decode_steps=0 must be >= 1"),
    (["checkpoint=/nowhere"], r"checkpoint=/nowhere is not a SpeLLM checkpoint"),
    (["model=mistral"], r"model.path=/path/to/folder"),
    (["decode.backend=graph"], r"decode.backend=graph is unknown; use one of \('eager', 'compiled'\)"),
    (["decode.compiler=cudagraphs", "device=cpu"], r"decode.compiler=cudagraphs needs a CUDA GPU"),
    (["prompts_file=/nowhere.json"], r"prompts_file=/nowhere.json does not exist"),
])
def test_bad_bench_configs_fail_before_loading(overrides, message, cache_dir):
    with pytest.raises(BenchConfigError, match=message):
        check_bench_config(_bench_cfg(cache_dir, *overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_names_the_fix(cache_dir):
    with pytest.raises(BenchConfigError, match=r"no CUDA GPU is visible here; use device=cpu"):
        check_bench_config(_bench_cfg(cache_dir, "device=cuda"))


def test_a_model_too_large_for_memory_is_skipped_without_loading(cache_dir, monkeypatch):
    monkeypatch.setattr(bench, "available_memory_gb", lambda device: 8.0)
    monkeypatch.setattr(bench, "build_spellm", lambda *a: pytest.fail("must not load"))
    record = bench.run_bench(_bench_cfg(cache_dir, "model=mistral", "model.init=random"))
    assert record["skipped"].startswith("needs 27.0 GB of float32 weights") and "8.0 GB available" in record["skipped"]


def _record(model, init, device, ratio_1, bound, skipped=None, head_type=None, decode=None, bandwidth=None):
    record = {"model": model, "init": init, "dtype": "float32", "provenance": {"device": device, "git_sha": "abc",
                                                                              "date": "2026-11-23"}}
    if skipped:
        return {**record, "skipped": skipped}
    side = lambda step: {"step_ms": step, "prefill_ms": 1.0, "chars_per_s": 100.0 / step, "tokens_per_s": 10.0,  # noqa: E731
                         "chars_per_step": 3.0, "non_vocab_share": 0.0, "peak_memory_mb": 5.0}
    return {**record, "teacher": {"description": model.upper()},
            "spellm": {"k": 16, "sigma": 66, "alphabet": "chars-64", "heads": "distilled checkpoint x",
                       **({"head_type": head_type} if head_type else {}), "decode": decode or "free"},
            **({"bandwidth": bandwidth} if bandwidth else {}),
            "bound": {"ratio": bound},
            "batches": [{"batch_size": 1, "teacher": side(10.0), "spellm": side(10.0 * ratio_1), "step_ratio": ratio_1,
                         "output_layer": {"teacher_ms": 2.0, "spellm_ms": 0.5, "spellm_host_ms": 0.08,
                                          "host_share_of_spellm_step": 0.01}}]}


def test_paired_ratios_pair_each_repeats_runs_and_the_table_shows_their_median_and_range():
    runs = lambda steps: [{"step_s": step} for step in steps]  # noqa: E731
    batch = {"teacher": {"runs": runs([0.10, 0.20, 0.10]), "step_ms": 100.0},
             "spellm": {"runs": runs([0.05, 0.06, 0.07]), "step_ms": 60.0}, "step_ratio": 0.6}
    assert paired_ratios(batch) == pytest.approx([0.5, 0.3, 0.7])
    assert paired_ratios({"teacher": {}, "spellm": {}, "step_ratio": 0.8}) == [0.8]  # a record that kept no runs
    record = _record("gemma", "pretrained", "CPU", 0.6, 0.42)
    record["batches"][0]["teacher"]["runs"], record["batches"][0]["spellm"]["runs"] = batch["teacher"]["runs"], \
        batch["spellm"]["runs"]
    shown, tidy = table_frames([record])
    row = shown.iloc[0]
    assert row["measured ratio"] == pytest.approx(0.5) and row["reduction %"] == pytest.approx(50.0)
    assert (row["ratio range"], row["repeats"]) == ("0.300-0.700", 3)
    assert tidy.iloc[0]["ratio_of_medians"] == pytest.approx(0.6) and tidy.iloc[0]["ratio"] == pytest.approx(0.5)


def test_table_builder_turns_records_into_rows():
    records = [_record("llama", "pretrained (dequantised GGUF)", "CPU", 0.8, 0.79),
               _record("qwen", "random init", "CPU", 0.5, 0.45), _record("gemma2", "random init", "CPU", 0.7, 0.6),
               _record("qwen", "random init", "H100", 0.9, 0.45),
               _record("mistral", "random init", "CPU", 0, 0, skipped="needs 27.0 GB"),
               _record("qwen", "random init", "CPU", 0.6, 0.5, head_type={"kind": "mixture", "components": 8})]
    shown, tidy = table_frames(records)
    first = shown.iloc[0]
    assert (first["model"], first["batch"], first["step ms teacher"], first["step ms SpeLLM"]) == ("LLAMA", 1, 10.0, 8.0)
    assert first["reduction %"] == pytest.approx(20.0) and first["string->ids % of step"] == pytest.approx(1.0)
    assert first["note"] == "distilled heads" and first["SpeLLM"] == "k=16 chars-64 linear"  # records before head types
    # per device: real teachers first, each model's linear heads before its other head types, skipped records last
    assert list(shown["model"]) == ["LLAMA", "GEMMA2", "QWEN", "QWEN", "mistral", "QWEN"]
    assert shown.iloc[3]["SpeLLM"] == "k=16 chars-64 mixture-8"
    assert shown.iloc[4]["note"] == "skipped: needs 27.0 GB" and shown.iloc[4]["step ms teacher"] == ""
    assert len(tidy) == 5 and list(tidy["head_type"]) == ["linear", "linear", "linear", "mixture-8", "linear"]
    # the average is per device, over random-init rows of the paper's linear heads only: never across devices
    assert average_reductions(tidy) == pytest.approx({"CPU": 40.0, "H100": 10.0})


def test_compiled_rows_show_their_loop_and_bandwidth_floor_and_average_apart():
    compiled = {"mode": "free", "backend": "compiled", "compiler": "cudagraphs"}
    floor = {"copy_gb_s": 3000.0, "teacher_floor_ms": 4.0, "spellm_floor_ms": 3.0}
    records = [_record("qwen", "random init", "H100", 0.9, 0.45),
               _record("qwen", "random init", "H100", 0.6, 0.45, decode=compiled, bandwidth=floor)]
    shown, tidy = table_frames(records)
    assert list(shown["loop"]) == ["eager", "compiled"]
    assert shown.iloc[0]["teacher / floor"] == "" and shown.iloc[1]["teacher / floor"] == pytest.approx(2.5)
    assert tidy.iloc[1]["teacher_floor_ms"] == 4.0 and tidy.iloc[1]["copy_gb_s"] == 3000.0
    assert average_reductions(tidy) == pytest.approx({"H100": 10.0, "H100, compiled": 40.0})


def test_table2_from_kept_records_writes_markdown_csv_and_plot(tmp_path):
    bench_dir = tmp_path / "bench"
    for index, record in enumerate([_record("llama", "pretrained", "CPU", 0.8, 0.79),
                                    _record("qwen", "random init", "CPU", 0.5, 0.45)]):
        (bench_dir / "cpu").mkdir(parents=True, exist_ok=True)
        (bench_dir / "cpu" / f"{index}.json").write_text(json.dumps(record))
    result = subprocess.run([sys.executable, "-m", "spellm_exp.table2", "run_bench=false", f"bench_dir={bench_dir}",
                             f"paths.results_dir={tmp_path}/results", f"hydra.run.dir={tmp_path}/run"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "results" / "table2.md").read_text()
    assert ("| LLAMA | pretrained | CPU | float32 | eager | 1 | k=16 chars-64 linear | 10 | 8 |  | 0.8 | 0.800-0.800 | 1 | 0.79 | 20 | 3 |"
            in markdown)
    assert "CPU: 50.0%" in markdown  # the random-init average
    assert (tmp_path / "results" / "table2.png").stat().st_size > 1000
    assert len((tmp_path / "results" / "table2.csv").read_text().splitlines()) == 3


def test_table2_benches_each_entry_into_its_device_folder(cache_dir, tmp_path):
    from omegaconf import open_dict

    from spellm_exp.reporting.table2 import bench_entries, load_records

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="table2", overrides=[f"paths.cache_dir={cache_dir}", f"bench_dir={tmp_path}/bench"])
        with open_dict(cfg):
            cfg.entries = {"tiny": ["model=tiny_llama", f"checkpoint={tmp_path}/missing", "batch_sizes=[1]",
                                    "layer_repeats=2", "threads=1"]}
            cfg.profiles.quick.update(prompt_tokens=16, decode_steps=2, warmup=0, repeats=1)
        bench_entries(cfg)
    (record,) = load_records(tmp_path / "bench")
    assert record["spellm"]["heads"].startswith("heads at init")  # the missing checkpoint falls back
    assert record["entry"] == "tiny"  # the entry that wrote it, shown in the table's note
    shown, tidy = table_frames([record])
    assert shown.iloc[0]["note"] == "heads at init; tiny" and tidy.iloc[0]["entry"] == "tiny"
    assert record["settings"]["decode_steps"] == 2 and record["dtype"] == "float32"
    assert list((tmp_path / "bench").glob("*/tiny.json"))


def test_results_index_links_every_table_and_plot(tmp_path):
    from spellm_exp.reporting.index import write_index

    (tmp_path / "table1.md").write_text("# Table 1: quality\n\nbody")
    (tmp_path / "table1.csv").write_text("a\n1\n")
    (tmp_path / "table1.provenance.json").write_text(json.dumps({"command": "python -m spellm_exp.table1",
                                                                  "git_sha": "0123456789abcdef", "date": "today"}))
    (tmp_path / "table2.png").write_bytes(b"png")
    (tmp_path / "bench" / "cpu").mkdir(parents=True)
    (tmp_path / "bench" / "cpu" / "x.json").write_text("{}")
    text = write_index(tmp_path).read_text()
    assert ("| [Table 1: quality](table1.md) | [table1.csv](table1.csv) | `python -m spellm_exp.table1` | "
            "`0123456789ab` | today |") in text
    assert "- [table2.png](table2.png)" in text and "- [bench/](bench/): 1 JSON records" in text


def test_a_failing_entry_is_retried_then_recorded_as_skipped_when_asked_to_keep_going(cache_dir, tmp_path,
                                                                                       monkeypatch):
    import spellm_exp.reporting.table2 as table2
    from omegaconf import open_dict

    from spellm_exp.reporting.table2 import bench_entries, load_records

    real_run_bench = table2.run_bench

    def flaky(cfg):
        if cfg.decode.backend == "compiled" or cfg.model.name == "tiny_qwen":
            raise RuntimeError("CUDA graph capture failed")
        return real_run_bench(cfg)

    monkeypatch.setattr(table2, "run_bench", flaky)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="table2", overrides=[f"paths.cache_dir={cache_dir}", f"bench_dir={tmp_path}/bench",
                                                       "keep_going=true", 'retry_with=["decode.backend=eager"]'])
        with open_dict(cfg):
            cfg.entries = {"llama": ["model=tiny_llama"], "qwen": ["model=tiny_qwen"]}
            cfg.common = ["decode.backend=compiled", "batch_sizes=[1]", "layer_repeats=2", "threads=1"]
            cfg.profiles.quick.update(prompt_tokens=16, decode_steps=2, warmup=0, repeats=1)
        bench_entries(cfg)
        cfg.only = ["llama", "gpt"]
        with pytest.raises(BenchConfigError, match=r"only=\['gpt'\]: no such entries; use some of \['llama', 'qwen'\]"):
            bench_entries(cfg)
        cfg.only = ["qwen"]
        with pytest.raises(RuntimeError, match="CUDA graph capture failed"):  # without keep_going: fail loudly
            cfg.keep_going = False
            bench_entries(cfg)
    records = {r["model"]: r for r in load_records(tmp_path / "bench")}
    assert records["tiny_llama"]["spellm"]["decode"]["backend"] == "eager"
    assert "after RuntimeError: CUDA graph capture failed" in records["tiny_llama"]["retried"]
    assert records["tiny_qwen"]["skipped"] == "failed: RuntimeError: CUDA graph capture failed"
    shown, _ = table_frames(list(records.values()))
    assert "retried with ['decode.backend=eager']" in shown.iloc[0]["note"]
