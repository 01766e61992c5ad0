"""The quality / speed trade-off joins each SpeLLM's accuracy gap to its decode-step ratio, per head type."""

import pandas as pd
import pytest

from spellm_exp.reporting.tradeoff import plot_tradeoff, quality_gaps, tradeoff_frame


def test_gaps_join_ratios_of_the_same_model_and_head_type_on_one_device(tmp_path):
    pd.DataFrame([
        {"model": "SmolLM2", "variant": "spellm linear-teacher", "task": "average", "value": -0.14, "stderr": 0.02,
         "head_type": "linear"},
        {"model": "SmolLM2", "variant": "spellm linear-teacher", "task": "piqa", "value": -0.2, "stderr": 0.05,
         "head_type": "linear"},
        {"model": "SmolLM2", "variant": "teacher", "task": "piqa", "value": 0.7, "stderr": 0.05, "head_type": None},
        {"model": "Gemma", "variant": "spellm mixture_8-teacher", "task": "average", "value": -0.02, "stderr": 0.01,
         "head_type": "mixture-8"},
    ]).to_csv(tmp_path / "table1.csv", index=False)
    pd.DataFrame([{"model": "SmolLM2", "variant": "spellm linear - teacher", "task": "average", "value": -0.1,
                   "stderr": 0.01}]).to_csv(
        tmp_path / "quality_ablation.csv", index=False)  # written before head types: left out
    gaps = quality_gaps(tmp_path)
    assert list(gaps["head_type"]) == ["linear", "mixture-8"]
    assert list(gaps["row"]) == ["linear", "mixture_8"]  # the run's name, from the variant
    assert gaps["accuracy gap (points)"].tolist() == pytest.approx([-14.0, -2.0])
    bench = pd.DataFrame([
        {"model": "SmolLM2", "head_type": "linear", "device": "CPU", "batch": 1, "ratio": 0.85},
        {"model": "SmolLM2", "head_type": "linear", "device": "CPU", "batch": 8, "ratio": 0.8},
        {"model": "SmolLM2", "head_type": "linear", "device": "H100", "batch": 1, "ratio": 1.0},
        {"model": "Gemma", "head_type": "mixture-8", "device": "CPU", "batch": 1, "ratio": 0.4},
        {"model": "Gemma", "head_type": "linear", "device": "CPU", "batch": 1, "ratio": 0.38},
    ])
    frame = tradeoff_frame(gaps, bench, "CPU")
    assert frame[["model", "head_type"]].values.tolist() == [["SmolLM2", "linear"], ["Gemma", "mixture-8"]]
    assert frame["step ratio b=1"].tolist() == [0.85, 0.4]
    assert frame["step ratio b=8"].iloc[0] == 0.8 and pd.isna(frame["step ratio b=8"].iloc[1])
    assert not any(column.startswith("compiled") for column in frame)  # no compiled loop timed: no such columns
    plot_tradeoff(frame, tmp_path / "tradeoff.png", "CPU")
    assert (tmp_path / "tradeoff.png").stat().st_size > 1000


def test_a_head_type_timed_twice_takes_the_record_with_more_repeats():
    gaps = pd.DataFrame([{"source": "Table 1 (9 tasks)", "model": "Gemma", "row": "shortlist_16k_qa_boolq",
                          "head_type": "shortlist-16384+context", "accuracy gap (points)": -2.2, "gap stderr": 0.7}])
    bench = pd.DataFrame([
        {"model": "Gemma", "head_type": "shortlist-16384+context", "device": "CPU", "loop": "eager", "batch": 1,
         "ratio": 0.48, "repeats": 5, "date": "2026-12-02"},
        {"model": "Gemma", "head_type": "shortlist-16384+context", "device": "CPU", "loop": "eager", "batch": 1,
         "ratio": 0.44, "repeats": 15, "date": "2026-12-01"},
        {"model": "Gemma", "head_type": "shortlist-16384+context", "device": "CPU", "loop": "compiled", "batch": 1,
         "ratio": 0.40, "repeats": 30, "date": "2026-12-03"},
    ])
    frame = tradeoff_frame(gaps, bench, "CPU")
    assert frame["step ratio b=1"].tolist() == [0.44]
    assert frame["compiled step ratio b=1"].tolist() == [0.40]  # the compiled loop's record, in its own column
