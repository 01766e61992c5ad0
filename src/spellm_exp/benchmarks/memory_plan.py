"""The memory per GPU that heads-only distillation of each teacher needs.

An estimate from the architectures' configs alone (parameters counted on the meta device, nothing
allocated), for the trainer configs of conf/trainer/: DDP keeps the whole frozen teacher on every
GPU; FSDP keeps 1/N of it plus one gathered decoder block. The loss's share is what method.md
bounds: teacher logits are computed `loss.chunk_elements` at a time (positions x |V|), so per
chunk the bf16 logits, their fp32 softmax and its transposed copy (2 + 4 + 4 bytes an element),
whatever |V| and the batch; unchunked, the same bytes for every position of the batch at once.
results/distill_throughput.md measures the two on CPU (the distillation step's peak rise against
a plain teacher forward). reporting.memory writes results/distill_memory.{md,csv}.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from spellm_exp.teachers.architectures import meta_model

GB = 2**30
LOGIT_BYTES = 2 + 4 + 4  # bf16 logits, fp32 softmax, the transposed fp32 copy the sparse product reads
ADAMW_COPIES = 4  # fp32 weights, gradients, two moments


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from an architecture."""

    params: int
    layer_params: int  # the largest decoder block (what FSDP gathers at a time)
    vocab_size: int
    hidden_size: int
    ffn_size: int

    @classmethod
    def of(cls, config: PretrainedConfig) -> Shape:
        model = meta_model(config)
        layer = max(sum(p.numel() for p in block.parameters()) for block in model.model.layers)
        return cls(sum(p.numel() for p in model.parameters()), layer, config.vocab_size, config.hidden_size,
                   config.intermediate_size)


@dataclass(frozen=True)
class Setting:
    k: int
    sigma: int
    tokens_per_gpu: int  # data.batch_size x data.block_size
    chunk_elements: int
    weight_bytes: int  # 4: fp32 weights (model.dtype=float32); 2: bfloat16


def plan(shape: Shape, setting: Setting, fsdp_devices: int) -> dict:
    """GB per GPU: weights (DDP and FSDP), the heads' training state, the loss with and without chunks."""
    heads_state = setting.k * setting.sigma * (shape.hidden_size + 1) * 4 * ADAMW_COPIES
    chunk_positions = max(1, setting.chunk_elements // shape.vocab_size)
    chunked = min(chunk_positions, setting.tokens_per_gpu) * shape.vocab_size * LOGIT_BYTES
    # frozen forward, no grad: the hidden states kept for the heads, plus one block's transient tensors (bf16)
    activations = setting.tokens_per_gpu * (4 * shape.hidden_size + 2 * (3 * shape.ffn_size + 6 * shape.hidden_size))
    ddp_weights = shape.params * setting.weight_bytes
    fsdp_weights = (shape.params / fsdp_devices + shape.layer_params) * setting.weight_bytes
    rest = heads_state + chunked + activations
    return {
        "params_M": shape.params / 1e6,
        "vocab": shape.vocab_size,
        "logits_MB_per_token": shape.vocab_size * 4 / 2**20,
        "loss_unchunked_GB": setting.tokens_per_gpu * shape.vocab_size * LOGIT_BYTES / GB,
        "loss_chunked_GB": chunked / GB,
        "heads_adamw_GB": heads_state / GB,
        "activations_GB": activations / GB,
        "ddp_weights_GB": ddp_weights / GB,
        "ddp_total_GB": (ddp_weights + rest) / GB,
        "fsdp_weights_GB": fsdp_weights / GB,
        "fsdp_total_GB": (fsdp_weights + rest) / GB,
    }
