"""Table 1 aggregation from evaluation folders: exact values on a hand-made case."""

import json
import math

import pytest

from spellm_exp.evaluation.metrics import harness_results, paired_difference
from spellm_exp.reporting.quality import accuracy_row
from spellm_exp.reporting.table1 import spellm_rows


def _write(folder, results, samples):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"results": results}))
    (folder / "samples.jsonl").write_text("\n".join(json.dumps(s) for s in samples))


@pytest.fixture
def eval_dirs(tmp_path):
    teacher, spellm = tmp_path / "teacher", tmp_path / "spellm"
    _write(teacher, {"arc_easy": {"acc,none": 0.5, "acc_norm,none": 0.75},
                     "lambada_openai": {"acc,none": 0.5, "perplexity,none": 20.0}},
           [{"task": "arc_easy", "doc_id": i, "acc": a, "acc_norm": n} for i, (a, n) in
            enumerate([(1, 1), (0, 1), (1, 1), (0, 0)])]
           + [{"task": "lambada_openai", "doc_id": i, "acc": a} for i, a in enumerate([1, 0])])
    _write(spellm, {"arc_easy": {"acc,none": 0.25, "acc_norm,none": 0.5},
                    "lambada_openai": {"acc,none": 0.0, "perplexity,none": 40.0}},
           [{"task": "arc_easy", "doc_id": i, "acc": a, "acc_norm": n} for i, (a, n) in
            enumerate([(1, 1), (0, 0), (0, 1), (0, 0)])]
           + [{"task": "lambada_openai", "doc_id": i, "acc": a} for i, a in enumerate([0, 0])])
    return teacher, spellm


def test_paired_difference(eval_dirs):
    mean, se, n = paired_difference(*eval_dirs, "arc_easy", "acc_norm")
    # per-document differences: 0, -1, 0, 0
    assert (mean, n) == (-0.25, 4)
    assert se == pytest.approx(math.sqrt(0.25) / 2)  # sample std 0.5 over sqrt(4)


def test_table_rows(eval_dirs):
    tasks = ["arc_easy", "lambada_openai"]
    teacher_results = harness_results(eval_dirs[0])
    teacher, teacher_tidy = accuracy_row("SmolLM2", "teacher", "teacher", teacher_results, tasks)
    (spellm, diff), tidy = spellm_rows("SmolLM2", "SpeLLM k=16", "spellm linear", *eval_dirs, tasks, teacher_results)
    assert diff["variant"] == "SpeLLM k=16 - teacher"
    assert teacher["arc_easy (acc_norm)"] == 75.0 and teacher["lambada_openai (acc)"] == 50.0
    assert teacher["lambada_openai (ppl)"] == 20.0 and teacher["average"] == 62.5
    assert spellm["variant"] == "SpeLLM k=16" and spellm["average"] == 25.0
    assert diff["arc_easy (acc_norm)"] == "-25.0 ± 25.0"
    assert diff["lambada_openai (acc)"] == "-50.0 ± 50.0"
    # standard errors 0.25 (arc_easy) and 0.5 (lambada: differences -1, 0), combined over two tasks
    assert diff["average"] == f"{-37.5:+.2f} ± {100 * math.sqrt(0.25 ** 2 + 0.5 ** 2) / 2:.2f}"
    assert {r["metric"] for r in tidy if r["task"] == "lambada_openai"} == {"acc", "perplexity"}
    assert {r["variant"] for r in tidy} == {"spellm linear", "spellm linear-teacher"}


def test_bits_per_byte_rows_are_paired_relative_and_not_averaged(tmp_path):
    """Per-document bpb = -loglikelihood / (bytes ln 2); the gap is paired per document, the relative gap pools
    all bytes, and neither enters the accuracy average."""
    teacher, spellm = tmp_path / "teacher", tmp_path / "spellm"
    ln2 = math.log(2)
    docs = [(100, -100 * ln2, -110 * ln2), (300, -150 * ln2, -180 * ln2)]  # bytes, teacher and SpeLLM log p
    arc = [{"task": "arc_easy", "doc_id": i, "acc": a, "acc_norm": a} for i, a in enumerate([1, 0])]
    for folder, column, bpb in ((teacher, 1, 0.625), (spellm, 2, 0.725)):
        bpb_docs = [{"task": "wikipedia_bpb", "doc_id": i, "loglikelihood": doc[column], "bytes": doc[0]}
                    for i, doc in enumerate(docs)]
        _write(folder, {"arc_easy": {"acc,none": 0.5, "acc_norm,none": 0.5},
                        "wikipedia_bpb": {"bits_per_byte,none": bpb}}, arc + bpb_docs)
    tasks = ["arc_easy", "wikipedia_bpb"]
    teacher_results = harness_results(teacher)
    row, _ = accuracy_row("SmolLM2", "teacher", "teacher", teacher_results, tasks)
    assert row["wikipedia_bpb (bits_per_byte)"] == 0.625 and row["average"] == 50.0
    (_, diff), tidy = spellm_rows("SmolLM2", "SpeLLM", "spellm linear", teacher, spellm, tasks, teacher_results)
    # per document: 1.1 - 1.0 = 0.1 and 0.6 - 0.5 = 0.1; pooled: 290 / 250 bits = +16%
    assert diff["wikipedia_bpb (bits_per_byte)"] == "+0.100 ± 0.000 (+16.0%)"
    assert diff["average"] == "+0.00 ± 0.00"
    gap = [r for r in tidy if r["metric"] == "bits_per_byte_relative_gap"]
    assert len(gap) == 1 and gap[0]["value"] == pytest.approx(0.16)


TINY = ["model=tiny_llama", "k=4", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1", "data.max_chars_per_source=20000", "data.block_size=32", "data.batch_size=2",
        "data.val_blocks=4", "checkpoint.every_n_train_steps=2", "trainer.enable_progress_bar=false"]


def _table1_config(tmp_path, cache_dir, head_types, *overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from spellm_exp.config import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="table1", overrides=[
            "profiles.quick.models=[llama]", "profiles.quick.limit=3", "tasks=[arc_easy]",
            f"paths.cache_dir={cache_dir}", f"paths.output_dir={tmp_path}/outputs",
            f"paths.results_dir={tmp_path}/results", *overrides])
    with open_dict(cfg):
        cfg.head_types = head_types
        cfg.profiles.quick.head_types = {}  # the test's head types are the rows
    return cfg


def test_table1_distils_scores_and_can_leave_out_head_types_not_distilled_yet(cache_dir, tmp_path):
    """End to end on a tiny teacher: one row per head type; with distil_missing=false a head type whose run has
    not finished is listed in the notes instead of distilled, and the finished ones are reused."""
    import pandas as pd

    from spellm_exp.reporting.table1 import write_table1

    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY}), "test")
    runs = tmp_path / "outputs" / "train"
    assert [p.name for p in runs.iterdir()] == ["smollm2_k16_quick_linear"]
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")}
    assert len(stamps) == 2  # the teacher and the SpeLLM

    shortlist = [*TINY, "heads=shortlist", "heads.shortlist=16"]
    cfg = _table1_config(tmp_path, cache_dir, {"linear": TINY, "shortlist_16": shortlist}, "distil_missing=false")
    write_table1(cfg, "test")
    assert [p.name for p in runs.iterdir()] == ["smollm2_k16_quick_linear"]  # nothing distilled
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("results.json")} == stamps  # nothing scored again
    markdown = (tmp_path / "results" / "table1.md").read_text()
    assert "Left out, neither archived with these settings nor distilled by this call" in markdown
    assert "not in `only`): llama shortlist_16." in markdown
    assert "SpeLLM k=4 chars-64+esc linear - teacher" in markdown and "shortlist-16" not in markdown

    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY, "shortlist_16": shortlist}), "test")
    tidy = pd.read_csv(tmp_path / "results" / "table1.csv")
    archive = tmp_path / "results" / "table1_evals" / "quick" / "llama"
    assert sorted(p.name for p in archive.iterdir()) == ["linear", "shortlist_16", "teacher"]
    assert set(tidy["head_type"].dropna()) == {"linear", "shortlist-16"}
    markdown = (tmp_path / "results" / "table1.md").read_text()
    assert "| SpeLLM k=4 chars-64+esc shortlist-16 (shortlist_16) - teacher |" in markdown and "Left out" not in markdown


def test_table1_rebuilds_from_its_archived_evaluations_without_the_runs(cache_dir, tmp_path):
    """Each row's evaluation is archived under results/table1_evals; on a machine without the runs (outputs/ gone)
    the same table is read back from there, nothing distilled or scored, unless the settings changed or
    reuse_archived=false."""
    import shutil

    from spellm_exp.reporting.table1 import write_table1

    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY}), "test")
    results = tmp_path / "results"
    first = (results / "table1.csv").read_text()
    archived = results / "table1_evals" / "quick" / "llama" / "linear"
    stored = json.loads((archived / "results.json").read_text())
    assert stored["spellm_exp"]["row"]["label"] == "SpeLLM k=4 chars-64+esc linear"
    assert stored["spellm_exp"]["provenance"]["config"]["settings"]["overrides"] == TINY
    assert (archived / "samples.jsonl").read_text().count('"task": "arc_easy"') == 3  # profiles.quick.limit=3
    shutil.rmtree(tmp_path / "outputs")

    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY}, "distil_missing=false"), "test")
    assert not (tmp_path / "outputs").exists()  # nothing distilled or scored
    assert (results / "table1.csv").read_text() == first  # the same rows, from the archive
    markdown = (results / "table1.md").read_text()
    assert "Read back from those archived evaluations" in markdown and "llama teacher" in markdown

    # another document count is another evaluation: not read back, so (without its run) left out
    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY}, "distil_missing=false",
                                "profiles.quick.limit=2"), "test")
    assert "not in `only`): llama linear." in (results / "table1.md").read_text()
    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY}, "distil_missing=false",
                                "reuse_archived=false"), "test")
    assert "Left out" in (results / "table1.md").read_text()

    # only=[...] distils and scores just those rows; the others are read back (or left out)
    shortlist = [*TINY, "heads=shortlist", "heads.shortlist=16"]
    with pytest.raises(ValueError, match=r"only=\['llama/mixture'\]: name rows of this profile as model/head_type"):
        write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY, "shortlist_16": shortlist},
                                    "only=[llama/mixture]"), "test")
    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY, "shortlist_16": shortlist},
                                "only=[llama/shortlist_16]"), "test")
    assert [p.name for p in (tmp_path / "outputs" / "train").iterdir()] == ["smollm2_k16_quick_shortlist_16"]
    markdown = (results / "table1.md").read_text()
    assert "SpeLLM k=4 chars-64+esc linear - teacher" in markdown and "shortlist-16 (shortlist_16) - teacher" in markdown
    # re-scoring one row the documented way keeps every other row in the table (read back from the archive)
    write_table1(_table1_config(tmp_path, cache_dir, {"linear": TINY, "shortlist_16": shortlist},
                                "only=[llama/shortlist_16]", "reuse_archived=false"), "test")
    markdown = (results / "table1.md").read_text()
    assert "SpeLLM k=4 chars-64+esc linear - teacher" in markdown and "shortlist-16 (shortlist_16) - teacher" in markdown
    assert "llama linear (" in markdown.split("Read back from those archived evaluations")[1]


def test_in_domain_notes_follow_each_head_types_data_sources():
    """The in-domain note is derived from the data config each head type distils on, not kept by hand."""
    from spellm_exp.config import compose_config
    from spellm_exp.reporting.table1 import in_domain_notes

    cfg = compose_config("table1", ["tasks=[boolq,piqa,sciq]"])
    cfg.head_types = {"paper": [], "qa": ["data=mix_qa"], "qa_boolq": ["data=mix_qa_boolq", "heads=mlp"],
                      "plays": ["data=shakespeare"]}
    cfg.profiles.quick.head_types = {}  # every head type is a row of every teacher
    notes = in_domain_notes(cfg)
    assert len(notes) == 2  # the default mix holds HellaSwag's answers, which this call does not score
    assert "qa distilled on `data=mix_qa`" in notes[0] and "gold answers, of piqa (" in notes[0]
    assert "qa_boolq distilled on `data=mix_qa_boolq`" in notes[1] and "gold answers, of boolq, piqa (" in notes[1]
    assert not any("paper" in note or "plays" in note or "sciq" in note for note in notes)


def test_each_teacher_has_the_rows_its_profile_names(tmp_path):
    """profiles.<profile>.head_types picks each model's rows (in its order); a model it does not name gets every
    head type; a name that is no head type fails before anything is distilled."""
    from spellm_exp.config import compose_config
    from spellm_exp.reporting.table1 import model_head_types, write_table1

    cfg = compose_config("table1", ["profile=full"])
    cfg.head_types = {"linear": [], "big": ["heads=shortlist"], "small": ["heads=mlp"]}
    cfg.profiles.full.head_types = {"gemma": ["small", "linear"]}
    assert model_head_types(cfg, "gemma") == {"small": ["heads=mlp"], "linear": []}
    assert list(model_head_types(cfg, "llama")) == ["linear", "big", "small"]
    cfg.profiles.full.head_types = {"gemma": ["linear", "huge"]}
    with pytest.raises(ValueError, match=r"profiles.full.head_types.gemma=\['huge'\]: no such head types"):
        write_table1(cfg, "test")
    # two teachers, nothing archived or distilled: each one's own rows are listed as left out
    cfg.profiles.full.head_types = {"gemma": ["small", "linear"]}
    cfg.distil_missing, cfg.paths.results_dir, cfg.paths.output_dir = False, str(tmp_path), str(tmp_path / "out")
    write_table1(cfg, "test")
    assert ("not in `only`): llama linear, llama big, llama small, gemma small, gemma linear."
            in (tmp_path / "table1.md").read_text())
    # the committed quick profile: Gemma-3's rows are its BoolQ-answer lists, not SmolLM2's 8k/10k/12k sizes
    quick = compose_config("table1", [])
    assert "shortlist_10k_qa_seen_teacher_rows" in model_head_types(quick, "llama")
    assert "shortlist_10k_qa_seen_teacher_rows" not in model_head_types(quick, "gemma")
    assert list(model_head_types(quick, "gemma"))[0] == "linear"  # the paper's heads, first for every teacher
