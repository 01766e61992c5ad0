"""The per-GPU memory estimate: exact parameter counts from configs, and the arithmetic on a small case."""

import pytest

from spellm_exp.benchmarks.memory_plan import GB, Setting, Shape, plan
from spellm_exp.teachers import TINY_MODELS


@pytest.mark.parametrize("name", TINY_MODELS)
def test_shapes_count_the_parameters_the_built_model_has(name, tiny_teacher):
    model = tiny_teacher(name).model
    shape = Shape.of(model.config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.layer_params == sum(p.numel() for p in model.model.layers[0].parameters())
    assert (shape.vocab_size, shape.hidden_size) == (model.config.vocab_size, 64)


def test_plan_by_hand():
    shape = Shape(params=1000, layer_params=100, vocab_size=50, hidden_size=4, ffn_size=8)
    setting = Setting(k=2, sigma=3, tokens_per_gpu=10, chunk_elements=120, weight_bytes=4)
    row = {key: value * GB if key.endswith("_GB") else value for key, value in plan(shape, setting, 4).items()}
    assert row["loss_chunked_GB"] == pytest.approx(2 * 50 * 10)  # 120 // 50 = 2 positions a chunk, 10 bytes each
    assert row["loss_unchunked_GB"] == pytest.approx(10 * 50 * 10)
    assert row["heads_adamw_GB"] == pytest.approx(2 * 3 * 5 * 4 * 4)  # k x sigma x (d + bias), fp32, 4 copies
    assert row["activations_GB"] == pytest.approx(10 * (4 * 4 + 2 * (3 * 8 + 6 * 4)))
    assert row["ddp_weights_GB"] == pytest.approx(4000) and row["fsdp_weights_GB"] == pytest.approx((250 + 100) * 4)
    rest = 2 * 50 * 10 + 480 + 1120
    assert row["ddp_total_GB"] == pytest.approx(4000 + rest) and row["fsdp_total_GB"] == pytest.approx(1400 + rest)
    # the chunk bound holds whatever the vocabulary: a 10x larger |V| only shrinks the positions per chunk
    wide = plan(Shape(1000, 100, 500, 4, 8), Setting(2, 3, 10, 1200, 4), 4)
    assert wide["loss_chunked_GB"] * GB <= 1200 * 10 < wide["loss_unchunked_GB"] * GB
