"""The lm-eval wrapper: teacher parity with lm-eval's own HFLM, SpeLLM parity with SpeLLM.score."""

import math

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from spellm_exp.core.charset import Alphabet, CharsetKind, SegmentationError
from spellm_exp.core.scoring import score_requests
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.evaluation.harness import SpeLLMEvalError, SpeLLMHarnessLM

REQUESTS = [("The capital of France is", " Paris"), ("Question: is water wet?\nAnswer:", " yes"),
            ("A B C", " D E F G"), ("Once upon a time ", "there was a king.")]


def _instances(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gemma"])
def test_teacher_loglikelihood_equals_lm_eval_hflm(name, tiny_teacher):
    teacher = tiny_teacher(name)
    ours = SpeLLMHarnessLM(variant="teacher", teacher=teacher, batch_size=3)
    peer = HFLM(pretrained=teacher.model, tokenizer=teacher.tokenizer, batch_size=3)
    mine = ours.loglikelihood(_instances("loglikelihood", REQUESTS))
    theirs = peer.loglikelihood(_instances("loglikelihood", REQUESTS))
    for (a, greedy_a), (b, greedy_b) in zip(mine, theirs):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    # rolling: the text's own tokens given the prefix token, as HFLM without a BOS of its own
    rolling = [("The quick brown fox jumps over the lazy dog. " * 3,)]
    peer = HFLM(pretrained=teacher.model, tokenizer=teacher.tokenizer, batch_size=3, add_bos_token=False)
    assert ours.loglikelihood_rolling(_instances("loglikelihood_rolling", rolling))[0] == pytest.approx(
        peer.loglikelihood_rolling(_instances("loglikelihood_rolling", rolling))[0], abs=1e-3)


def test_spellm_loglikelihood_equals_spellm_score(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=8)
    with torch.no_grad():
        spellm.heads.weight.normal_(std=0.3)
    lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm, batch_size=2)
    results = lm.loglikelihood(_instances("loglikelihood", REQUESTS))
    for (logprob, greedy), request in zip(results, REQUESTS):
        expected = spellm.score(*request)
        assert logprob == pytest.approx(expected.logprob, abs=1e-4) and greedy == expected.is_greedy


def test_teacher_marginals_variant_scores_with_the_teachers_marginals(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=8)
    lm = SpeLLMHarnessLM(variant="teacher_marginals", spellm=spellm, batch_size=2)
    results = lm.loglikelihood(_instances("loglikelihood", REQUESTS))
    expected = score_requests(spellm, REQUESTS, source="teacher_marginals")
    assert [r[0] for r in results] == pytest.approx([e.logprob for e in expected], abs=1e-4)
    with pytest.raises(SpeLLMEvalError, match=r"only scores"):
        lm.generate_until(_instances("generate_until", [("Hello", {"until": [], "max_gen_toks": 4})]))


def test_uncoverable_continuations_are_counted_and_texts_fail_loudly(tiny_teacher):
    """Without the byte escape a character outside the alphabet cannot be spelled: a multiple-choice request
    counts as wrong (and is counted), a text to score whole fails instead of averaging a -inf in; with the
    escape both score finitely."""
    plain = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet(CharsetKind.chars, tuple(" abc")), k=4)
    lm = SpeLLMHarnessLM(variant="spellm", spellm=plain)
    results = lm.loglikelihood(_instances("loglikelihood", [("x", " abc"), ("x", " xyz")]))
    assert results[1][0] == float("-inf") and lm.failures == 1
    with pytest.raises(SegmentationError, match="charset.escape=true"):
        lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [("abc xyz",)]))
    escaped = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet(CharsetKind.chars, tuple(" abc"), escape=True), k=4)
    lm = SpeLLMHarnessLM(variant="spellm", spellm=escaped)
    assert all(math.isfinite(r[0]) for r in lm.loglikelihood(_instances("loglikelihood", [("x", " xyz")])))
    assert math.isfinite(lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [("abc xyz é",)]))[0])
    assert lm.failures == 0


@pytest.mark.parametrize("variant", ["teacher", "spellm"])
def test_bits_per_byte_equals_a_hand_computation(tiny_teacher, tmp_path, variant):
    """wikipedia_bpb through the harness = -sum log p(token | earlier) / (bytes * ln 2), computed here from
    the model's own outputs on the first two paragraphs."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from spellm_exp.evaluation.tasks import write_task_yamls

    teacher = tiny_teacher("tiny_llama")
    spellm = SpeLLM.build(teacher, Alphabet.ascii_(escape=True), k=24)
    with torch.no_grad():
        spellm.heads.weight.normal_(std=0.3)
    lm = SpeLLMHarnessLM(variant=variant, spellm=spellm if variant == "spellm" else None,
                         teacher=teacher if variant == "teacher" else None)
    manager = TaskManager(include_path=str(write_task_yamls(tmp_path, ["wikipedia_bpb"])), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["wikipedia_bpb"], task_manager=manager, limit=2,
                                  bootstrap_iters=0, log_samples=True)
    pages = [sample["doc"]["page"] for sample in out["samples"]["wikipedia_bpb"]]
    total_logprob = 0.0
    for page in pages:
        ids = teacher.tokenizer(page, add_special_tokens=False).input_ids
        inputs = torch.tensor([[teacher.tokenizer.bos_token_id or teacher.tokenizer.eos_token_id] + ids[:-1]])
        with torch.no_grad():
            hidden = teacher.model.model(inputs).last_hidden_state[0]
            if variant == "teacher":
                log_probs = torch.log_softmax(teacher.model.lm_head(hidden), -1)
                total_logprob += log_probs[torch.arange(len(ids)), torch.tensor(ids)].sum().item()
            else:
                assert spellm.spellable[ids].all()  # no re-segmentation: each token is spelled as it is
                log_probs = torch.log_softmax(spellm.heads.logits(hidden), -1)  # [n, k, |Sigma|]
                rows = spellm.spelling_table[torch.tensor(ids)]  # [n, k]
                total_logprob += log_probs.gather(-1, rows.unsqueeze(-1)).sum().item()
    n_bytes = sum(len(page.encode("utf-8")) for page in pages)
    expected = -total_logprob / (n_bytes * math.log(2))
    assert out["results"]["wikipedia_bpb"]["bits_per_byte,none"] == pytest.approx(expected, rel=1e-4)


def test_generate_until_stops_on_the_stop_strings(tiny_teacher):
    teacher = tiny_teacher("tiny_llama")
    lm = SpeLLMHarnessLM(variant="teacher", teacher=teacher)
    free = lm.generate_until(_instances("generate_until", [("Hello", {"until": [], "max_gen_toks": 12})]))[0]
    stop = free[4:7]
    cut = lm.generate_until(_instances("generate_until", [("Hello", {"until": [stop], "max_gen_toks": 12})]))[0]
    assert cut == free[: free.index(stop)]


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(SpeLLMEvalError, match=r"not a SpeLLM checkpoint or a training run folder"):
        SpeLLMHarnessLM(checkpoint=str(tmp_path))
    with pytest.raises(SpeLLMEvalError, match=r"variant=both is unknown"):
        SpeLLMHarnessLM(checkpoint=str(tmp_path), variant="both")
    with pytest.raises(SpeLLMEvalError, match=r"variant=teacher with model=<name>"):
        SpeLLMHarnessLM()


def test_harness_cli_accepts_model_spellm(tmp_path, tiny_teacher, cache_dir):
    import json
    import os
    import subprocess
    import sys

    from spellm_exp.evaluation.tasks import write_task_yamls

    SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=8).save(tmp_path / "ckpt")
    tasks = write_task_yamls(tmp_path / "tasks", ["arc_easy"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "spellm_exp.lm_eval", "--model", "spellm",
         "--model_args", f"checkpoint={tmp_path / 'ckpt'},cache_dir={cache_dir}", "--batch_size", "4",
         "--tasks", "arc_easy", "--include_path", str(tasks), "--limit", "3",
         "--output_path", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    written = list((tmp_path / "out").rglob("results_*.json"))
    assert len(written) == 1
    assert "acc,none" in json.loads(written[0].read_text())["results"]["arc_easy"]


def test_evaluate_or_reuse_adds_only_the_missing_tasks(tiny_teacher, tmp_path, monkeypatch):
    import json

    import lm_eval

    from spellm_exp.evaluation import run

    lm = SpeLLMHarnessLM(variant="teacher", teacher=tiny_teacher("tiny_llama"))
    evaluated = []
    real = lm_eval.simple_evaluate

    def counting(**kwargs):
        evaluated.append(list(kwargs["tasks"]))
        return real(**kwargs)

    monkeypatch.setattr(run.lm_eval, "simple_evaluate", counting)
    first = run.evaluate_or_reuse(lm, ["arc_easy"], tmp_path / "eval", 0, 2, {"model": "tiny"})
    both = run.evaluate_or_reuse(lm, ["arc_easy", "wikipedia_bpb"], tmp_path / "eval", 0, 2, {"model": "tiny"})
    again = run.evaluate_or_reuse(lm, ["wikipedia_bpb", "arc_easy"], tmp_path / "eval", 0, 2, {"model": "tiny"})
    assert evaluated == [["arc_easy"], ["wikipedia_bpb"]]
    assert both["arc_easy"] == first["arc_easy"] and again == both and "bits_per_byte,none" in both["wikipedia_bpb"]
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert sorted((s["task"], s["doc_id"]) for s in samples) == [("arc_easy", 0), ("arc_easy", 1),
                                                                   ("wikipedia_bpb", 0), ("wikipedia_bpb", 1)]
    assert {"loglikelihood", "bytes"} <= set(samples[-1])
    # other settings (here the limit) evaluate everything again, into the same folder
    run.evaluate_or_reuse(lm, ["arc_easy"], tmp_path / "eval", 0, 3, {"model": "tiny"})
    assert evaluated[-1] == ["arc_easy"] and not (tmp_path / "eval" / "added").exists()
