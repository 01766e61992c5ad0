"""The lm-eval wrapper: teacher parity with lm-eval's own HFLM, SpeLLM parity with SpeLLM.score."""

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from spellm_exp.core.charset import Alphabet, CharsetKind
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
    rolling = [("The quick brown fox jumps over the lazy dog. " * 3,)]
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


def test_uncoverable_continuations_are_counted(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet(CharsetKind.chars, tuple(" abc")), k=4)
    lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm)
    results = lm.loglikelihood(_instances("loglikelihood", [("x", " abc"), ("x", " xyz")]))
    assert results[1][0] == float("-inf") and lm.failures == 1


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
