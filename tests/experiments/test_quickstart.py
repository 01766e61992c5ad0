"""make quickstart in a reduced form: the best head type of Table 1, distilled for two steps on a tiny teacher,
scored and timed; the head type comes from conf/table1.yaml by name."""

import json

import pytest
from omegaconf import open_dict

from spellm_exp.config import compose_config
from spellm_exp.experiments.quickstart import head_type_overrides, run_quickstart
from spellm_exp.training.distill import ConfigError


def test_the_quickstart_distils_scores_and_times_the_best_head_type(cache_dir, tmp_path):
    cfg = compose_config("quickstart", [f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}",
                                        f"paths.features_dir={tmp_path}/features", "limit=3",
                                        "bench.decode_steps=3", "bench.repeats=1", "bench.layer_repeats=1"])
    with open_dict(cfg):
        cfg.train_overrides = ["model=tiny_llama", "k=4", "heads.shortlist=1024", "trainer.max_steps=2", "trainer.val_check_interval=2",
                               "trainer.limit_val_batches=1", "data.max_chars_per_source=20000",
                               "data.block_size=32", "data.batch_size=2", "data.val_blocks=4"]
    record = run_quickstart(cfg, tmp_path / "run")
    assert record["steps"] == 2 and record["head_type"] == "shortlist_16k_qa_seen_teacher_rows"
    meta = json.loads((tmp_path / "run" / "train" / "spellm" / "spellm.json").read_text())
    assert meta["heads"]["kind"] == "shortlist" and meta["heads"]["shortlist"] == 1024  # reduced from 16,384
    assert meta["heads"]["context_tokens"] is True
    assert 0 <= record["accuracy_spellm_pct"] <= 100 and 0 <= record["accuracy_teacher_pct"] <= 100
    assert record["step_ratio"] > 0
    for part in ("quickstart.json", "bench.json", "eval/teacher/results.json", "eval/spellm/results.json"):
        assert (tmp_path / "run" / part).exists(), part


def test_the_head_type_is_read_from_table1_by_name():
    assert head_type_overrides("shortlist_16k_qa_seen_teacher_rows") == list(
        compose_config("table1").head_types.shortlist_16k_qa_seen_teacher_rows)
    with pytest.raises(ConfigError, match="head_type=best is not one of conf/table1.yaml's head types"):
        head_type_overrides("best")
