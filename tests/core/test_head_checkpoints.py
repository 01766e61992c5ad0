"""Every head type saves and loads through the one SpeLLM checkpoint; a mismatching type fails clearly."""

import json

import pytest
import torch

from spellm_exp.config import HeadKind, HeadsConfig
from spellm_exp.core.charset import PAD, Alphabet
from spellm_exp.core.decoding import decode
from spellm_exp.core.spellm import CheckpointError, SpeLLM

SETTINGS = {HeadKind.linear: HeadsConfig(), HeadKind.mlp: HeadsConfig(kind=HeadKind.mlp, trunk_multiple=1),
            HeadKind.mixture: HeadsConfig(kind=HeadKind.mixture, components=3),
            HeadKind.autoregressive: HeadsConfig(kind=HeadKind.autoregressive, decoder_size=8),
            HeadKind.shortlist: HeadsConfig(kind=HeadKind.shortlist, shortlist=64),
            "shortlist+autoregressive": HeadsConfig(kind=HeadKind.shortlist, shortlist=64, rest=HeadKind.autoregressive,
                                                    decoder_size=8),
            "shortlist+mlp": HeadsConfig(kind=HeadKind.shortlist, shortlist=64, rest=HeadKind.mlp, trunk_multiple=1),
            "shortlist,tail": HeadsConfig(kind=HeadKind.shortlist, shortlist=64, tail_rank=8, exact_rows=16)}


def _spellm(tiny_teacher, kind):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4, heads=SETTINGS[kind])
    torch.manual_seed(0)
    with torch.no_grad():  # every part non-zero, so a part that failed to load would show
        for parameter in spellm.heads.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return spellm


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_save_load_round_trip_of_every_head_type(kind, tiny_teacher, cache_dir, tmp_path):
    spellm = _spellm(tiny_teacher, kind)
    spellm.save(tmp_path)
    meta = json.loads((tmp_path / "spellm.json").read_text())
    assert meta["heads"]["kind"] == SETTINGS[kind].kind.value and meta["format_version"] == 2
    assert meta["heads"].get("rest") == (kind.split("+")[1] if "+" in str(kind) else None)
    loaded = SpeLLM.load(tmp_path, cache_dir=cache_dir)
    assert type(loaded.heads) is type(spellm.heads)
    for (name, a), (_, b) in zip(loaded.heads.state_dict().items(), spellm.heads.state_dict().items()):
        assert torch.equal(a, b), name
    ids = spellm.tokenizer(["The cat sat"], return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = spellm.backbone(ids)[0][0]
        strings = spellm.spelling_table[:50].expand(hidden.shape[0], -1, -1)
        torch.testing.assert_close(loaded.heads(hidden).log_prob(strings), spellm.heads(hidden).log_prob(strings))


def test_loading_with_another_head_type_fails_clearly(tiny_teacher, cache_dir, tmp_path):
    _spellm(tiny_teacher, HeadKind.mixture).save(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds heads \{'kind': 'mixture', 'components': 3\}, not the "
                                              r"\{'kind': 'linear'\} asked for"):
        SpeLLM.load(tmp_path, cache_dir=cache_dir, heads=HeadsConfig())
    SpeLLM.load(tmp_path, cache_dir=cache_dir, heads=SETTINGS[HeadKind.mixture])  # the same settings load


def test_a_format_1_checkpoint_loads_as_linear_heads(tiny_teacher, cache_dir, tmp_path):
    spellm = _spellm(tiny_teacher, HeadKind.linear)
    spellm.save(tmp_path)
    meta = json.loads((tmp_path / "spellm.json").read_text())
    del meta["heads"]
    meta["format_version"] = 1
    (tmp_path / "spellm.json").write_text(json.dumps(meta))
    assert SpeLLM.load(tmp_path, cache_dir=cache_dir).heads.kind is HeadKind.linear


@pytest.mark.parametrize("kind", list(HeadKind))
@pytest.mark.parametrize("mode", ["free", "vocab"])
def test_every_head_type_decodes_its_greedy_strings(kind, mode, tiny_teacher):
    spellm = _spellm(tiny_teacher, kind)
    out = decode(spellm, ["The cat", "Once upon a"], mode=mode, max_new_tokens=4, ignore_eos=True)
    assert out.stats.strings == 8 and all(len(ids) >= 4 for ids in out.token_ids)
    # the first string of row 0 is the heads' greedy string (free) or best vocabulary string (vocab)
    ids = spellm.tokenizer(["The cat"], return_tensors="pt").input_ids
    with torch.no_grad():
        strings = spellm.heads(spellm.backbone(ids)[0][:, -1])
        if mode == "vocab":
            best = strings.vocab_log_probs(spellm.spelling_table, spellm.spellable).argmax(-1)
            assert out.token_ids[0][0] == best.item()
        else:
            symbols = strings.greedy(forbid_pad_first=True)[0].tolist()
            length = next((i for i, s in enumerate(symbols) if s in (0, 1)), len(symbols))
            text = "".join(spellm.alphabet.unit_of(s) for s in symbols[:length])
            assert out.texts[0].startswith(text)


def test_heads_can_start_from_another_checkpoints_matching_tensors(tiny_teacher, cache_dir, tmp_path):
    """train.init_from: a trained shortlist's rows, gate, tokens and linear heads under a new character decoder,
    which starts at zero, so the new SpeLLM scores as the old one (strings that do not end before their last
    symbol: after an end the decoder puts all the mass on PAD, where the product spreads it)."""
    source = _spellm(tiny_teacher, HeadKind.shortlist)
    source.heads.token_ids.copy_(source.heads.token_ids.flip(0))  # a shortlist that a fresh build would not pick
    source.heads.strings.copy_(source.spelling_table[source.heads.token_ids])
    source.save(tmp_path / "source")
    target = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4,
                          heads=SETTINGS["shortlist+autoregressive"])
    copied = target.init_heads_from(tmp_path / "source")
    assert set(copied) == set(source.heads.state_dict())  # everything the source has; the decoder keeps its init
    assert torch.equal(target.heads.token_ids, source.heads.token_ids)
    ids = source.tokenizer(["The cat sat"], return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = source.backbone(ids)[0][0]
        table = source.spelling_table
        strings = table[(table[:, :-1] != PAD).all(-1)][:50].expand(hidden.shape[0], -1, -1)
        assert strings.shape[1] == 50
        torch.testing.assert_close(target.heads(hidden).log_prob(strings), source.heads(hidden).log_prob(strings))
    other_k = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=3, heads=SETTINGS[HeadKind.shortlist])
    with pytest.raises(CheckpointError, match=r"its spelling table \(k=4, .*\) is not this run's \(k=3"):
        other_k.init_heads_from(tmp_path / "source")
    mixture = SpeLLM.build(tiny_teacher("tiny_llama"), Alphabet.ascii_(), k=4, heads=SETTINGS[HeadKind.mixture])
    with pytest.raises(CheckpointError, match=r"none of its head tensors"):
        mixture.init_heads_from(tmp_path / "source")
