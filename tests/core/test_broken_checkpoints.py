"""A checkpoint that is broken or holds diverged (NaN) weights is refused in one line naming the file and the fix;
a NaN score is a scoring failure, never a number."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from spellm_exp.core.charset import Alphabet
from spellm_exp.core.scoring import ScoringError, score_requests
from spellm_exp.core.spellm import CheckpointError, SpeLLM


@pytest.fixture(scope="module")
def saved(tiny_teacher, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "spellm"
    SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4).save(folder)
    return folder


@pytest.fixture
def broken(saved, tmp_path):
    folder = tmp_path / "spellm"
    shutil.copytree(saved, folder)
    return folder


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("damage,message", [
    (lambda f: _truncate(f / "heads.safetensors"), r"heads\.safetensors is not a readable safetensors file .*truncated"),
    (lambda f: (f / "heads.safetensors").unlink(), r"heads\.safetensors is missing"),
    (lambda f: (f / "spellm.json").write_text("{not json"), r"spellm\.json is not valid JSON"),
    (lambda f: (f / "spellm.json").write_text(""), r"spellm\.json is not valid JSON"),
    (lambda f: (f / "spellm.json").write_text("[1, 2]"), r"spellm\.json holds a list, not a checkpoint description"),
    (lambda f: (f / "spellm.json").write_text(json.dumps(
        {k: v for k, v in json.loads((f / "spellm.json").read_text()).items() if k != "teacher"})),
     r"spellm\.json lacks teacher"),
    (lambda f: (f / "spellm.json").write_text(json.dumps(
        {**json.loads((f / "spellm.json").read_text()), "teacher": {"info": {}}})), r"spellm\.json lacks teacher\.config"),
])
def test_a_broken_checkpoint_file_is_named_with_the_fix(damage, message, broken, cache_dir):
    damage(broken)
    with pytest.raises(CheckpointError, match=message) as caught:
        SpeLLM.load(broken, cache_dir=cache_dir)
    assert str(broken) in str(caught.value)
    assert "export the checkpoint again" in str(caught.value).lower() or "distil new heads" in str(caught.value)


def test_nan_weights_are_refused_when_loading(broken, cache_dir):
    tensors = load_file(broken / "heads.safetensors")
    save_file({name: torch.full_like(t, math.nan) for name, t in tensors.items()}, broken / "heads.safetensors")
    with pytest.raises(CheckpointError, match=r"heads\.safetensors: \d+ tensor\(s\) hold NaN or infinite weights "
                                              r"\(bias, weight\): the training that made them diverged"):
        SpeLLM.load(broken, cache_dir=cache_dir)


def test_nan_weights_are_refused_when_saving_and_nothing_is_written(tiny_teacher, tmp_path):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4)
    with torch.no_grad():
        spellm.heads.weight[0, 0] = math.inf
    with pytest.raises(CheckpointError, match=r"the heads to save .*: 1 tensor\(s\) hold NaN or infinite weights"):
        spellm.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_nan_log_likelihood_is_a_scoring_failure(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4)
    with torch.no_grad():
        spellm.heads.weight.fill_(math.nan)  # what a diverged run's heads compute
    result = score_requests(spellm, [("The cat", " sat")], raise_on_failure=False)[0]
    assert result.logprob == -math.inf and not result.is_greedy
    assert "not numbers" in result.failure
    with pytest.raises(ScoringError, match="the log-likelihood is nan"):
        score_requests(spellm, [("The cat", " sat")])


def test_the_harness_counts_nan_scores_as_failures(tiny_teacher):
    from lm_eval.api.instance import Instance

    from spellm_exp.evaluation.harness import SpeLLMHarnessLM

    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4)
    with torch.no_grad():
        spellm.heads.weight.fill_(math.nan)
    lm = SpeLLMHarnessLM(variant="spellm", spellm=spellm)
    requests = [Instance("loglikelihood", {}, ("The cat", choice), 0) for choice in (" sat", " ran")]
    scores = lm.loglikelihood(requests, disable_tqdm=True)
    assert [logprob for logprob, _ in scores] == [-math.inf, -math.inf] and lm.failures == 2
