"""SpeLLM: one backbone pass for heads and teacher, save/load, and an untouched teacher."""

import pytest
import torch

from spellm_exp.core.charset import Alphabet, CharsetKind, SpellingError
from spellm_exp.core.spellm import CheckpointError, SpeLLM
from spellm_exp.teachers import TINY_MODELS, ModelConfig, load_teacher

TEXT = ["The cat sat on the mat.", "Hello world"]


def _batch(tokenizer):
    return tokenizer(TEXT, padding=True, return_tensors="pt")


def _spellm_and_causal_lm_outputs(teacher, k):
    spellm = SpeLLM.build(teacher, Alphabet.ascii_(), k=k)
    batch = _batch(teacher.tokenizer)
    with torch.no_grad():
        out = spellm(batch.input_ids, batch.attention_mask, return_teacher_logits=True)
        expected = teacher.model(**batch).logits
    return out, expected, batch


@pytest.mark.parametrize("name", TINY_MODELS)
def test_teacher_logits_from_the_same_pass_equal_the_causal_lm(name, tiny_teacher):
    out, expected, batch = _spellm_and_causal_lm_outputs(tiny_teacher(name), k=6)
    torch.testing.assert_close(out.teacher_logits, expected)
    log_probs = out.strings.marginal_log_probs()  # one row per (batch, time) position
    assert log_probs.shape == (batch.input_ids.numel(), 6, Alphabet.ascii_().size)
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(log_probs.shape[:-1]))


def test_final_logit_softcapping_belongs_to_the_teacher_head(cache_dir):
    teacher = load_teacher(name="tiny_gemma", cache_dir=cache_dir)
    teacher.model.config.final_logit_softcapping = 3.0
    out, expected, _ = _spellm_and_causal_lm_outputs(teacher, k=4)
    torch.testing.assert_close(out.teacher_logits, expected)
    assert out.teacher_logits.abs().max() <= 3.0


def test_build_rejects_bad_k(tiny_teacher):
    with pytest.raises(SpellingError, match=r"k=0"):
        SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=0)


def _train_heads_one_step(spellm, tokenizer):
    optimizer = torch.optim.SGD(spellm.heads.parameters(), lr=0.1)
    batch = _batch(tokenizer)
    loss = -spellm(batch.input_ids, batch.attention_mask).strings.marginal_log_probs()[..., 0].mean()
    loss.backward()
    optimizer.step()


def test_save_load_round_trip_keeps_outputs_and_the_tied_embedding(cache_dir, tmp_path):
    teacher = load_teacher(name="tiny_llama", cache_dir=cache_dir)
    assert teacher.info.tied
    embedding_before = teacher.model.get_input_embeddings().weight.detach().clone()
    spellm = SpeLLM.build(teacher, Alphabet(CharsetKind.chars, tuple("etaoin shrdlu")), k=5)
    _train_heads_one_step(spellm, teacher.tokenizer)
    assert torch.equal(teacher.model.get_input_embeddings().weight, embedding_before)
    assert teacher.model.get_output_embeddings().weight is teacher.model.get_input_embeddings().weight

    spellm.save(tmp_path / "ckpt")
    assert sum(f.stat().st_size for f in (tmp_path / "ckpt").iterdir()) < 5_000_000  # heads only
    loaded = SpeLLM.load(tmp_path / "ckpt", cache_dir=cache_dir)
    assert torch.equal(loaded.causal_lm.get_input_embeddings().weight, embedding_before)
    assert loaded.alphabet == spellm.alphabet and loaded.k == 5
    batch = _batch(teacher.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).strings.marginal_log_probs(), spellm(**batch).strings.marginal_log_probs(), rtol=0, atol=0)


def test_trained_backbone_is_saved_and_restored(cache_dir, tmp_path):
    teacher = load_teacher(name="tiny_qwen", cache_dir=cache_dir)
    spellm = SpeLLM.build(teacher, Alphabet.ascii_(), k=4)
    with torch.no_grad():
        teacher.model.base_model.layers[0].mlp.up_proj.weight.mul_(2.0)
    spellm.save(tmp_path / "ckpt", backbone_trained=True)
    loaded = SpeLLM.load(tmp_path / "ckpt", cache_dir=cache_dir)
    batch = _batch(teacher.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).strings.marginal_log_probs(), spellm(**batch).strings.marginal_log_probs())


def test_load_against_another_tokenizer_fails_clearly(tiny_teacher, cache_dir, tmp_path):
    SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4).save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"does not match the tokenizer of teacher 'tiny_qwen'"):
        SpeLLM.load(tmp_path / "ckpt", teacher_config=ModelConfig(name="tiny_qwen", cache_dir=cache_dir))


def test_load_against_another_alphabet_fails_clearly(tiny_teacher, tmp_path):
    SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4).save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"alphabet \(charset ascii .*\) differs .*charset bytes"):
        SpeLLM.load(tmp_path / "ckpt", alphabet=Alphabet.bytes_())


def test_load_of_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"not a SpeLLM checkpoint"):
        SpeLLM.load(tmp_path)
