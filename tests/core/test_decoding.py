"""The one decode loop: teacher parity with transformers' generate, SpeLLM modes, stop strings."""

import dataclasses

import pytest
import torch

from spellm_exp.config import HeadKind, HeadsConfig
from spellm_exp.core.charset import EOS, PAD, Alphabet, CharsetKind
from spellm_exp.core.decoding import Decoder, SpeLLMHead, TeacherHead, decode
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.teachers import TINY_MODELS, load_teacher

PROMPTS = ["The capital of France is", "Hello", "A much longer prompt, with several words in it"]
LETTERS = Alphabet(CharsetKind.chars, tuple(" abcdefghijklmnopqrstuvwxyz"))


def _generate_reference(teacher, prompts, max_new_tokens):
    enc = teacher.tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    out = teacher.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=teacher.tokenizer.pad_token_id)
    return out[:, enc.input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("name", TINY_MODELS)
def test_teacher_mode_reproduces_generate_token_for_token(name, tiny_teacher):
    teacher = tiny_teacher(name)
    result = decode(teacher, PROMPTS, mode="teacher", max_new_tokens=12, ignore_eos=True)
    assert result.token_ids == _generate_reference(teacher, PROMPTS, 12)
    assert result.texts == [teacher.tokenizer.decode(ids, skip_special_tokens=True) for ids in result.token_ids]
    stats = result.stats
    assert (stats.strings, stats.new_tokens, stats.steps) == (36, 36, 11)
    assert stats.new_chars == sum(map(len, result.texts)) and stats.non_vocab_share == 0


def test_stop_strings_cut_the_text(tiny_teacher):
    teacher = tiny_teacher("tiny_llama")
    full = decode(teacher, PROMPTS[:1], mode="teacher", max_new_tokens=12, ignore_eos=True)
    stop = full.texts[0][5:8]
    cut = decode(teacher, PROMPTS[:1], mode="teacher", max_new_tokens=12, ignore_eos=True, stop=[stop])
    assert cut.texts[0] == full.texts[0][: full.texts[0].index(stop)]
    assert cut.stats.strings < full.stats.strings


def test_vocab_mode_emits_only_vocabulary_tokens(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_gemma"), LETTERS, k=6)
    with torch.no_grad():
        spellm.heads.weight.normal_(std=1.0)
    result = decode(spellm, PROMPTS, mode="vocab", max_new_tokens=8)
    pieces = spellm.spelling.spellings.pieces
    assert result.stats.non_vocab_strings == 0 and result.stats.strings == 24
    for ids, text in zip(result.token_ids, result.texts):
        assert all(spellm.spelling.spellable[i] for i in ids)
        assert b"".join(pieces[i] for i in ids).decode() == text


def _rig(spellm, spelling: list[int]):
    """Heads that ignore the hidden state and always spell `spelling`."""
    with torch.no_grad():
        spellm.heads.weight.zero_()
        spellm.heads.bias.fill_(-20.0)
        for i, symbol in enumerate(spelling):
            spellm.heads.bias[i, symbol] = 20.0


def _symbols(text, k):
    index = {c: i + 2 for i, c in enumerate(LETTERS.units)}
    return [index[c] for c in text] + [PAD] * (k - len(text))


def test_free_mode_feeds_every_id_of_a_non_vocabulary_string(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6)
    _rig(spellm, _symbols(" qzxv", 6))
    ids, complete = spellm.spelling.cover_units(tuple(" qzxv"))  # longest vocabulary prefix, repeatedly
    assert complete and len(ids) > 1 and (" ", "q", "z", "x", "v") not in spellm.spelling.string_to_id
    assert b"".join(spellm.spelling.spellings.pieces[i] for i in ids) == b" qzxv"
    result = decode(spellm, PROMPTS[:2], mode="free", max_new_tokens=3)
    assert result.texts == [" qzxv" * 3] * 2
    assert result.token_ids == [ids * 3] * 2
    stats = result.stats
    assert stats.strings == 6 and stats.non_vocab_share == 1.0
    assert stats.steps == 2 * len(ids)  # the ids of the first two strings are fed; the last is not needed


def test_a_string_no_token_starts_is_emitted_and_fed_as_pad(tiny_teacher):
    """Where no vocabulary token starts the rest of a string (here a lone escape nibble: tokens spell whole
    bytes), the device feeds the pad id once and drops the rest; the host's rule says the same."""
    escaped = dataclasses.replace(LETTERS, escape=True)
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), escaped, k=6)
    lone_nibble = escaped.size - 1  # nibble 15
    string = _symbols(" the", 6)[:4] + [lone_nibble, PAD]
    _rig(spellm, string)
    head = SpeLLMHead(spellm)
    proposal = head.proposal(string)
    assert proposal.ids == (spellm.spelling.string_to_id[tuple(" the")], head.pad_id) and not proposal.in_vocab
    assert proposal.text == b" the"  # a nibble without its partner carries no byte
    for backend in ("eager", "compiled"):
        result = decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=2, backend=backend)
        assert result.texts == [" the" * 2] and result.token_ids == [list(proposal.ids) * 2]


def test_the_loop_times_prefill_and_each_step_with_the_given_clock(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6)
    _rig(spellm, _symbols(" the", 6))
    ticks = iter(range(1000))
    stats = decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=3, clock=lambda: float(next(ticks))).stats
    # clock calls: start 0, prefilled (prompt pass + first head step) 1, per step (start, end) = (2, 3), (4, 5); end 6
    assert stats.prefill_seconds == 1.0 and stats.step_seconds == [1.0, 1.0]
    assert stats.decode_seconds == 5.0


def test_free_mode_uses_the_vocabulary_id_when_the_string_is_a_token(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6)
    _rig(spellm, _symbols(" the", 6))
    result = decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=4)
    token = spellm.spelling.string_to_id[tuple(" the")]
    assert result.token_ids == [[token] * 4] and result.stats.non_vocab_strings == 0
    assert result.stats.steps == 3


def test_free_mode_stops_at_eos_and_never_starts_with_pad(tiny_teacher):
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=4)
    _rig(spellm, [EOS, PAD, PAD, PAD])
    assert decode(spellm, PROMPTS, mode="free", max_new_tokens=5).texts == ["", "", ""]
    _rig(spellm, [PAD, PAD, PAD, PAD])
    with torch.no_grad():
        spellm.heads.bias[0, LETTERS.units.index("a") + 2] = 10.0  # second best at position 1
    assert decode(spellm, PROMPTS[:1], mode="free", max_new_tokens=2).texts == ["aa"]


def test_unknown_mode_is_rejected(tiny_teacher):
    with pytest.raises(ValueError, match=r"decode=beam is unknown"):
        decode(tiny_teacher("tiny_llama"), PROMPTS, mode="beam")


def test_teacher_ids_past_the_tokenizer_are_fed_back_without_text(tiny_teacher):
    teacher = tiny_teacher("tiny_llama")
    spellings = SpeLLM.build(teacher, LETTERS, k=4).spelling.spellings
    head = TeacherHead(teacher.model, spellings)
    vocab = teacher.model.get_output_embeddings().weight.shape[0]
    past = len(spellings.pieces) - 1  # pretend the tokenizer ends here: its last id is now "past" it
    head.spellings = dataclasses.replace(spellings, pieces=spellings.pieces[:past])
    hidden = teacher.model.get_output_embeddings().weight[past].detach().unsqueeze(0) * 100
    step = head.step(hidden, torch.zeros(1, 1, dtype=torch.long))
    assert step.ids.tolist() == [past] and step.asked.all()
    proposal = head.proposal(step.output[0].tolist())
    assert proposal.ids == (past,) and proposal.text == b"" and past < vocab


# --- decode.backend=compiled: static KV cache, backbone step + head compiled as one function -------------------
def _spellm_with_random_heads(teacher, k=6):
    torch.manual_seed(0)
    spellm = SpeLLM.build(teacher, LETTERS, k=k)
    with torch.no_grad():
        spellm.heads.weight.normal_(std=0.05)
    return spellm


@pytest.mark.parametrize("name", TINY_MODELS)
def test_compiled_backend_gives_the_eager_tokens(name, tiny_teacher):
    """Teacher, free and vocab modes: token for token, on every family (the tiny sliding-window models attend
    past their 16-position window here, so the static cache's sliding layers are covered too)."""
    teacher = tiny_teacher(name)
    spellm = _spellm_with_random_heads(teacher)
    for model, mode in ((teacher, "teacher"), (spellm, "free"), (spellm, "vocab")):
        eager = decode(model, PROMPTS, mode=mode, max_new_tokens=10)
        compiled = decode(model, PROMPTS, mode=mode, max_new_tokens=10, backend="compiled")
        assert compiled.token_ids == eager.token_ids and compiled.texts == eager.texts, mode
        assert (compiled.stats.steps, compiled.stats.strings, compiled.stats.non_vocab_strings) == (
            eager.stats.steps, eager.stats.strings, eager.stats.non_vocab_strings)
    assert eager.stats.strings == 30
    assert decode(spellm, PROMPTS, mode="free", max_new_tokens=10).stats.non_vocab_share > 0.3  # the hard case ran


@pytest.mark.parametrize("rest_outside,tail_rank", [(1.0, 0), (0.01, 0), (1.0, 8)])
def test_a_shortlist_spellm_decodes_the_same_in_both_backends(tiny_teacher, rest_outside, tail_rank):
    """The shortlist type's greedy (hash lookup of its strings, the best of two candidates, or three with the rest
    renormalised over its vocabulary strings) compiles too, with a factored list tail as well."""
    torch.manual_seed(0)
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6, heads=HeadsConfig(
        kind=HeadKind.shortlist, shortlist=64, rest_outside=rest_outside, tail_rank=tail_rank,
        exact_rows=16 if tail_rank else 0))
    with torch.no_grad():
        spellm.heads.linear.weight.normal_(std=0.05)
    eager = decode(spellm, PROMPTS, mode="free", max_new_tokens=10)
    compiled = decode(spellm, PROMPTS, mode="free", max_new_tokens=10, backend="compiled")
    assert compiled.token_ids == eager.token_ids and compiled.texts == eager.texts
    assert eager.stats.strings == 30


@pytest.mark.parametrize("rest_outside,context_tokens", [(1.0, False), (0.01, False), (1.0, True)])
def test_a_prepared_shortlist_step_traces_as_one_graph(tiny_teacher, rest_outside, context_tokens):
    """The compiled loop fuses the whole head step only without graph breaks: the shortlist's lookup indexes are
    built by `prepare` (a traced step cannot compare data pointers to see whether they are stale)."""
    torch.manual_seed(0)
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6, heads=HeadsConfig(
        kind=HeadKind.shortlist, shortlist=64, rest_outside=rest_outside, context_tokens=context_tokens)).eval()
    head = SpeLLMHead(spellm)
    enc = spellm.tokenizer(PROMPTS, padding=True, padding_side="left", return_tensors="pt")
    head.prepare(torch.device("cpu"))
    head.begin(enc["input_ids"], enc["attention_mask"], steps=4)
    hidden = torch.randn(len(PROMPTS), spellm.info.hidden_size)
    pending = torch.full((len(PROMPTS), head.width), PAD, dtype=torch.long)
    with torch.inference_mode():
        explained = torch._dynamo.explain(head.step)(hidden, pending)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_a_compiled_decoder_reuses_its_step_and_reads_in_chunks(tiny_teacher):
    spellm = _spellm_with_random_heads(tiny_teacher("tiny_llama"))
    eager = decode(spellm, PROMPTS, mode="free", max_new_tokens=6, stop=["e"])
    decoder = Decoder(spellm.causal_lm, spellm.tokenizer, SpeLLMHead(spellm), backend="compiled", sync_every=4)
    first = decoder.generate(PROMPTS, max_new_tokens=6, stop=["e"])
    second = decoder.generate(PROMPTS, max_new_tokens=6, stop=["e"])
    assert first.texts == second.texts == eager.texts and first.token_ids == eager.token_ids
    assert first.stats.steps == eager.stats.steps  # the steps the rows needed, not the chunk's extra ones
    assert len(decoder._compiled) == 1  # same batch and cache length: one static cache, one compiled step
    timed = decoder.generate(PROMPTS, max_new_tokens=50, ignore_eos=True, max_steps=5)
    assert timed.stats.steps == 5 and len(timed.stats.step_seconds) == 5


def test_compiled_decoders_of_two_models_never_share_a_graph(tiny_teacher, cache_dir):
    """The compiled steps skip the modules' guards, so each Decoder's step must hold its own graphs: a second model
    that differs only in its parameters' shapes (a larger vocabulary) gets its own graph and its eager tokens."""
    first = tiny_teacher("tiny_llama")
    second = load_teacher(name="tiny_llama", cache_dir=cache_dir)  # a copy to change
    second.model.resize_token_embeddings(second.model.config.vocab_size + 64)
    for teacher in (first, second):
        eager = decode(teacher, PROMPTS, mode="teacher", max_new_tokens=6)
        compiled = decode(teacher, PROMPTS, mode="teacher", max_new_tokens=6, backend="compiled")
        assert compiled.token_ids == eager.token_ids


def test_an_unknown_backend_is_rejected(tiny_teacher):
    teacher = tiny_teacher("tiny_llama")
    with pytest.raises(ValueError, match=r"decode.backend=graph is unknown; use one of \('eager', 'compiled'\)"):
        Decoder(teacher.model, teacher.tokenizer, None, backend="graph")


def test_a_spellm_with_seen_tokens_decodes_each_token_from_the_tokens_fed_so_far(tiny_teacher):
    """heads.context_tokens: every step's token is the argmax of the distribution that the forward pass gives that
    position of prompt + output (the seen tokens grow as ids are fed); the compiled loop gives the eager tokens."""
    torch.manual_seed(0)
    spellm = SpeLLM.build(tiny_teacher("tiny_llama"), LETTERS, k=6, heads=HeadsConfig(
        kind=HeadKind.shortlist, shortlist=64, context_tokens=True))
    prompt = "the zebra and the zebra and the"
    out = decode(spellm, [prompt], mode="vocab", max_new_tokens=6, ignore_eos=True)
    prompt_ids = spellm.tokenizer(prompt).input_ids
    inputs = torch.tensor([prompt_ids + out.token_ids[0]])
    with torch.no_grad():
        scores = spellm(inputs).strings.vocab_log_probs(spellm.spelling_table, spellm.spellable)
    start = len(prompt_ids) - 1
    assert out.token_ids[0] == scores[start:start + 6].argmax(-1).tolist()
    assert spellm.token_context(inputs).visible[0, -1].sum() > 0  # some tokens were seen
    prompts = [prompt, "a zebra"]  # two rows, left-padded
    eager = decode(spellm, prompts, mode="free", max_new_tokens=8, ignore_eos=True)
    compiled = decode(spellm, prompts, mode="free", max_new_tokens=8, ignore_eos=True, backend="compiled")
    assert compiled.token_ids == eager.token_ids and compiled.texts == eager.texts
