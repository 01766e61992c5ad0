"""Heads-only distillation throughput and memory vs the teacher (`python -m spellm_exp.bench_distill`).

For each teacher, over the same batches and in one process: a plain teacher forward
(`model(ids).logits`, no grad) against one heads-only distillation step (backbone pass, chunked
teacher marginals, heads, backward, AdamW step), interleaved, after warm-up, the device
synchronised around each timed step. On a GPU both run under bf16 autocast (as trainer=gpu
does) and the rows carry model FLOPs utilisation. Peak memory is the rise over the resting level
during each kind of step (CPU: the process's peak RSS; CUDA: the allocator's peak), for several k.
Rows of earlier runs on other devices or precisions stay in results/distill_throughput.{md,csv},
each with its own git SHA and date, so CPU and GPU figures sit side by side.
"""

from __future__ import annotations

import logging
import statistics
from contextlib import AbstractContextManager

import torch
from omegaconf import DictConfig

from spellm_exp.benchmarks.measure import (
    device_clock,
    nonembedding_params,
    peak_rise_mb,
)
from spellm_exp.config import LossConfig, ModelConfig, TrainConfig
from spellm_exp.core.charset import build_alphabet
from spellm_exp.core.spellm import SpeLLM
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.data.datamodule import pack_blocks
from spellm_exp.provenance import device_name
from spellm_exp.teachers import load_teacher
from spellm_exp.training.module import DistillModule

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "32-true", "bf16-mixed")
# dense bf16 tensor-core peaks from NVIDIA's datasheets, matched in this order against the device name
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12))


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested} is unknown; use one of {PRECISIONS}.")
    if requested == "auto":
        return "bf16-mixed" if device.type == "cuda" else "32-true"
    return requested


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak for this precision, where known (bf16 on NVIDIA data-centre GPUs)."""
    if device.type != "cuda" or precision != "bf16-mixed":
        return None
    name = device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def step_flops_per_token(model: torch.nn.Module, context: int, k: int, sigma: int) -> dict[str, float]:
    """Model FLOPs per token (multiply-adds x 2) of a teacher forward and of a heads-only distillation step:
    the backbone's matmuls (2 x its non-embedding parameters), causal attention over `context` tokens
    (scores and values: 2 x layers x heads x head_dim x context), the teacher's logits (2 d |V|); the step adds
    the heads' forward and their weight gradient (4 d k |Sigma|; no gradient flows into the frozen backbone)."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * head_dim * context
    teacher = 2 * nonembedding_params(model) + attention + 2 * config.hidden_size * config.vocab_size
    return {"teacher": teacher, "distill": teacher + 4 * config.hidden_size * k * sigma}


def bench_model(name: str, cfg: DictConfig, device: torch.device, precision: str) -> list[dict]:
    teacher = load_teacher(ModelConfig(name=name, init=cfg.init, cache_dir=cfg.paths.cache_dir))
    model = teacher.model.to(device)
    blocks = pack_blocks(teacher.tokenizer, corpus_texts(["boolq"], cfg.corpus_chars), cfg.block_size)
    needed = (cfg.warmup + cfg.repeats) * cfg.batch_size
    if len(blocks) < needed:
        raise ValueError(f"corpus_chars={cfg.corpus_chars} gives {len(blocks)} blocks of {cfg.block_size} tokens; "
                         f"{needed} are needed: raise corpus_chars.")
    batches = [blocks[i * cfg.batch_size:(i + 1) * cfg.batch_size].to(device)
               for i in range(cfg.warmup + cfg.repeats)]
    clock, peak = device_clock(device), peak_flops(device, precision)

    def autocast() -> AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")

    def teacher_forward(ids):
        with torch.no_grad(), autocast():
            model(input_ids=ids).logits

    rows = []
    for k in cfg.ks:
        spellm = SpeLLM.build(teacher, build_alphabet(cfg.charset, 0), k)  # bytes or ascii: no corpus to count
        module = DistillModule(spellm, TrainConfig(), LossConfig(chunk_elements=cfg.chunk_elements)).to(device)
        module.train()
        optimizer = torch.optim.AdamW(spellm.heads.parameters(), lr=1e-3)

        def distill_step(ids):
            with autocast():
                parts = module.loss_parts(ids)[0]
            parts.total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = {"teacher": [], "distill": []}
        for index, ids in enumerate(batches):  # interleaved, so both see the same machine state
            for kind, fn in (("teacher", teacher_forward), ("distill", distill_step)):
                start = clock()
                fn(ids)
                if index >= cfg.warmup:
                    times[kind].append(clock() - start)
        tokens = batches[0].numel()
        speed = {kind: tokens / statistics.median(times[kind]) for kind in times}
        flops = step_flops_per_token(model, cfg.block_size, k, spellm.alphabet.size)
        rows.append({
            "model": name, "origin": teacher.info.origin, "device": device_name(device), "precision": precision,
            "vocab": teacher.info.vocab_size, "k": k, "sigma": spellm.alphabet.size, "batch_tokens": tokens,
            "teacher_tokens_per_s": speed["teacher"], "distill_tokens_per_s": speed["distill"],
            "throughput_ratio": speed["distill"] / speed["teacher"],
            "teacher_mfu": speed["teacher"] * flops["teacher"] / peak if peak else None,
            "distill_mfu": speed["distill"] * flops["distill"] / peak if peak else None,
            "teacher_peak_rise_mb": peak_rise_mb(lambda: teacher_forward(batches[0]), device),
            "distill_peak_rise_mb": peak_rise_mb(lambda: distill_step(batches[0]), device),
        })
        log.info("%s k=%d: %s", name, k, rows[-1])
    return rows
