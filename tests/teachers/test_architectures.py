"""The real-size configs written in code are the real architectures: exact parameter counts."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from spellm_exp.teachers.architectures import REAL_SIZE

# Published parameter counts of the checkpoints these configs describe.
PUBLISHED_PARAMS = {
    "smollm2_135m": 134_515_008,
    "gemma3_270m": 268_098_176,
    "llama32_1b": 1_235_814_400,
    "llama31_8b": 8_030_261_248,
    "qwen25_05b": 494_032_768,
    "mistral_7b": 7_241_732_096,
    "gemma2_2b": 2_614_341_888,
}


@pytest.mark.parametrize("name", sorted(REAL_SIZE))
def test_real_size_parameter_count(name):
    with torch.device("meta"):  # shapes only, no memory
        model = AutoModelForCausalLM.from_config(REAL_SIZE[name]())
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]
