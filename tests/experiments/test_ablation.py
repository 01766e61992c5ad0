"""The quality ablation end to end on a tiny teacher: distils each variant, scores, aggregates, re-uses."""

import re
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from spellm_exp.config import CONFIG_DIR
from spellm_exp.experiments.ablation import token_kl_curve
from spellm_exp.reporting.ablation import write_ablation_table

TINY = ["model=tiny_llama", "k=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "data.max_chars_per_source=20000", "data.block_size=32", "data.batch_size=2",
        "data.val_blocks=4", "checkpoint.every_n_train_steps=2", "trainer.enable_progress_bar=false"]


def test_ablation_distils_scores_and_tabulates_each_head_type(cache_dir, tmp_path):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="ablation", overrides=[
            "tasks=[arc_easy,lambada_openai]", "limit=3", f"paths.cache_dir={cache_dir}",
            f"paths.output_dir={tmp_path}/outputs", f"paths.results_dir={tmp_path}/results",
            "ceilings=[teacher_marginals,teacher_mixture_2]", "other_scores=[vocab_normalized]",
            "variant_ceilings=[teacher_shortlist,teacher_shortlist_weights]"])
    with open_dict(cfg):  # the first variant has overrides here, so every run gets its own suffix
        cfg.variants = {"linear": TINY, "mixture_2": [*TINY, "heads=mixture", "heads.components=2"],
                        "autoregressive": [*TINY, "heads=autoregressive", "heads.decoder_size=8"],
                        "shortlist": [*TINY, "heads=shortlist", "heads.shortlist=16"],
                        # on top of the shortlist run: the same tokens, so the same teacher_shortlist evaluation
                        "shortlist_mlp": [*TINY, "heads=shortlist", "heads.shortlist=16", "heads.rest=mlp",
                                          "heads.trunk_multiple=1",
                                          f"train.init_from={tmp_path}/outputs/train/smollm2_k16_quick_shortlist"],
                        # the shortlist's trained heads, no step more, scoring the seen tokens too: its own ceilings
                        "shortlist_seen": [*TINY, "heads=shortlist", "heads.shortlist=16", "heads.context_tokens=true",
                                           "trainer.max_steps=0",
                                           f"train.init_from={tmp_path}/outputs/train/smollm2_k16_quick_shortlist"]}
    write_ablation_table(cfg, "test")

    runs = tmp_path / "outputs" / "train"
    assert sorted(p.name for p in runs.iterdir()) == [
        "smollm2_k16_quick_autoregressive", "smollm2_k16_quick_linear", "smollm2_k16_quick_mixture_2",
        "smollm2_k16_quick_shortlist", "smollm2_k16_quick_shortlist_mlp", "smollm2_k16_quick_shortlist_seen"]
    tidy = pd.read_csv(tmp_path / "results" / "quality_ablation.csv")
    assert set(tidy["variant"]) >= {"teacher", "teacher_marginals", "teacher_mixture_2",
                                    "teacher_marginals, score=vocab_normalized", "spellm linear",
                                    "spellm linear, score=vocab_normalized", "spellm mixture_2",
                                    "spellm autoregressive", "spellm mixture_2 - teacher",
                                    # the shortlist variant's own ceilings (variant_ceilings), only for that one
                                    "teacher_shortlist (shortlist)", "teacher_shortlist_weights (shortlist)"}
    assert not any(v.startswith("teacher_shortlist (") and "shortlist" not in v for v in tidy["variant"])
    # the ceiling of a shortlist is scored once: the variant trained on top of it shares the evaluation
    ceiling = tidy[tidy["variant"].isin(["teacher_shortlist (shortlist)", "teacher_shortlist (shortlist_mlp)"])
                   & tidy["task"].eq("arc_easy")]
    assert len(ceiling) == 2 and ceiling["value"].nunique() == 1
    assert not (runs / "smollm2_k16_quick_shortlist_mlp" / "eval" / "ablation" / "teacher_shortlist").exists()
    assert (runs / "smollm2_k16_quick_shortlist_mlp" / "eval" / "ablation" / "teacher_shortlist_weights").exists()
    # seen tokens change the ceiling: scored again for that variant, and the 0-step run has the shortlist's weights
    assert (runs / "smollm2_k16_quick_shortlist_seen" / "eval" / "ablation" / "teacher_shortlist").exists()
    seen = tidy[tidy["variant"].isin(["spellm shortlist", "spellm shortlist_seen"]) & tidy["task"].eq("lambada_openai")
                & tidy["metric"].eq("perplexity")]
    assert len(seen) == 2
    markdown = (tmp_path / "results" / "quality_ablation.md").read_text()
    assert "## Training" in markdown and "heads.components=2" in markdown
    training = markdown.split("## Training")[1]  # variant, overrides, heads, trainable, steps, minutes, objective
    assert re.search(r"\| spellm mixture_2 \| [^|]* \| mixture-2 \| heads \| 2 \| [^|]* \| token \|", training)
    assert re.search(r"\| spellm linear \| [^|]* \| linear \| heads \| 2 \| [^|]* \| marginal \|", training)
    # the validation token KL after each validation (val_check_interval=2, max_steps=2: one), from the CSV log
    assert re.search(r"\| 2: \d+\.\d\d \|", training)

    # a second run re-uses every finished run and evaluation
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")}
    # teacher, 2 ceilings, 1 ceiling score, 6 SpeLLMs, 1 other score, the shortlists' 5 ceiling evaluations
    assert len(stamps) == 16
    write_ablation_table(cfg, "test")
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")} == stamps


def test_token_kl_curve_reads_the_last_value_logged_at_each_validation(tmp_path):
    (tmp_path / "csv").mkdir()
    # a resumed run logs step 249 twice; training rows have no validation value
    pd.DataFrame({"step": [10, 249, 249, 499], "val/token_kl": [None, 3.0, 2.5, 2.125]}).to_csv(
        tmp_path / "csv" / "metrics.csv", index=False)
    assert token_kl_curve(tmp_path) == "250: 2.50 / 500: 2.12"
    assert token_kl_curve(tmp_path / "no-run") == ""


def test_every_ablation_starts_from_the_base_and_holds_only_what_it_changes():
    import yaml

    from spellm_exp.config import compose_config

    conf = Path(CONFIG_DIR)
    base = yaml.safe_load((conf / "ablation_base.yaml").read_text())
    names = sorted(p.stem for p in conf.glob("ablation*.yaml") if p.stem != "ablation_base")
    assert len(names) >= 9
    for name in names:
        own = yaml.safe_load((conf / f"{name}.yaml").read_text())
        assert own["defaults"] == ["ablation_base", "_self_"], name
        assert not {key for key in own if key in base and own[key] == base[key]}, name  # nothing repeated
        cfg = compose_config(name)
        assert cfg.tasks == base["tasks"] or "tasks" in own
        assert cfg.table_name == own["table_name"] and cfg.variants
