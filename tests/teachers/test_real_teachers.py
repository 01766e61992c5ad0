"""The real pretrained teachers from their offline packages (slow: GGUF conversion takes a minute)."""

import time
from pathlib import Path

import pytest
import torch

from spellm_exp.teachers import MODELS, ORIGIN_GGUF, greedy_continuation, load_teacher
from spellm_exp.teachers.gguf_cache import MARKER

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
EXPECTED = {  # name: (family, parameters, vocabulary, hidden size)
    "llama": ("llama", 134_515_008, 49_152, 576),
    "gemma": ("gemma3", 268_098_176, 262_144, 640),
}


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("teacher-cache"))


def _prompt_logits(teacher) -> torch.Tensor:
    ids = teacher.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return teacher.model(ids).logits


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_teacher_converts_once_and_reloads_identically(name, fresh_cache):
    first = load_teacher(name=name, cache_dir=fresh_cache)
    family, n_params, vocab, hidden = EXPECTED[name]
    info = first.info
    assert (info.family, info.n_params, info.vocab_size, info.hidden_size) == (family, n_params, vocab, hidden)
    assert info.tied and info.origin == ORIGIN_GGUF
    folder = Path(fresh_cache) / "teachers" / MODELS[name].gguf.cache_key
    assert (folder / MARKER).exists() and (folder / "model.safetensors").exists()
    assert not list(folder.glob("*.gguf"))  # the assembled GGUF is not kept

    start = time.perf_counter()
    again = load_teacher(name=name, cache_dir=fresh_cache)
    reload_seconds = time.perf_counter() - start
    print(f"{name}: reload from the cache took {reload_seconds:.1f}s")
    assert again.info == info
    torch.testing.assert_close(_prompt_logits(again), _prompt_logits(first))


def test_smollm2_knows_the_capital_of_france(fresh_cache):
    teacher = load_teacher(name="llama", cache_dir=fresh_cache)
    assert "Paris" in greedy_continuation(teacher, PROMPT, max_new_tokens=8)


def test_decode_loop_reproduces_generate_on_smollm2(fresh_cache):
    from spellm_exp.core.decoding import decode

    teacher = load_teacher(name="llama", cache_dir=fresh_cache)
    prompts = [PROMPT, "Write a haiku about the sea:", "1, 2, 3,"]
    ours = decode(teacher, prompts, mode="teacher", max_new_tokens=16, ignore_eos=True)
    enc = teacher.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    reference = teacher.model.generate(**enc, max_new_tokens=16, do_sample=False,
                                       pad_token_id=teacher.tokenizer.pad_token_id)
    assert ours.token_ids == reference[:, enc.input_ids.shape[1]:].tolist()
    assert "Paris" in ours.texts[0]


def test_compiled_decoding_gives_the_eager_tokens_on_smollm2(fresh_cache):
    """decode.backend=compiled (static KV cache, torch.compile'd step) against the eager loop on the real teacher,
    with its own head and with the k=16 character heads at init (free mode: non-vocabulary strings included)."""
    from spellm_exp.core.charset import Alphabet
    from spellm_exp.core.decoding import decode
    from spellm_exp.core.spellm import SpeLLM

    teacher = load_teacher(name="llama", cache_dir=fresh_cache)
    spellm = SpeLLM.build(teacher, Alphabet.ascii_(escape=True), k=16)
    prompts = [PROMPT, "Write a haiku about the sea:", "1, 2, 3,"]
    for model, mode in ((teacher, "teacher"), (spellm, "free"), (spellm, "vocab")):
        eager = decode(model, prompts, mode=mode, max_new_tokens=16, ignore_eos=True)
        compiled = decode(model, prompts, mode=mode, max_new_tokens=16, ignore_eos=True, backend="compiled")
        assert compiled.token_ids == eager.token_ids and compiled.texts == eager.texts, mode


def test_harness_teacher_loglikelihood_equals_hflm_on_smollm2(fresh_cache):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from spellm_exp.evaluation.harness import SpeLLMHarnessLM

    teacher = load_teacher(name="llama", cache_dir=fresh_cache)
    requests = [(PROMPT, " Paris"), (PROMPT, " London"), ("Question: Is the sky blue?\nAnswer:", " yes"),
                ("The opposite of hot is", " cold"), ("2 + 2 =", " 4")]
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
    ours = SpeLLMHarnessLM(variant="teacher", teacher=teacher, batch_size=2).loglikelihood(instances)
    peer = HFLM(pretrained=teacher.model, tokenizer=teacher.tokenizer, batch_size=2).loglikelihood(instances)
    for (a, greedy_a), (b, greedy_b) in zip(ours, peer):
        assert abs(a - b) < 1e-4 and greedy_a == greedy_b
    assert ours[0][0] > ours[1][0]  # Paris beats London
