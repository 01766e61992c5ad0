"""python -m spellm_exp.bench_distill: heads-only distillation throughput and memory vs the teacher.

For each teacher, over the same batches and in one process: a plain teacher forward
(`model(ids).logits`, no grad) against one heads-only distillation step (backbone pass, chunked
teacher marginals, heads, backward, AdamW step), interleaved, after warm-up. Peak memory is the
rise of the process's peak RSS over its resting RSS during each kind of step (Linux
/proc/self/clear_refs resets the peak), measured for several k to show it does not grow with
|V| x k. Writes results/distill_throughput.{md,csv}.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from spellm_exp.charset import build_alphabet
from spellm_exp.config import CONFIG_PATH
from spellm_exp.data.corpus import corpus_texts
from spellm_exp.data.datamodule import pack_blocks
from spellm_exp.lit_module import DistillModule, LossConfig, TrainConfig
from spellm_exp.measure import peak_rise_mb
from spellm_exp.model import SpeLLM
from spellm_exp.models import load_teacher
from spellm_exp.provenance import provenance
from spellm_exp.results import write_table

log = logging.getLogger(__name__)


def bench_model(name: str, cfg: DictConfig) -> list[dict]:
    teacher = load_teacher(name=name, cache_dir=cfg.paths.cache_dir)
    blocks = pack_blocks(teacher.tokenizer, corpus_texts(["boolq"], 400_000), cfg.block_size)
    batches = [blocks[i * cfg.batch_size:(i + 1) * cfg.batch_size] for i in range(cfg.warmup + cfg.repeats)]
    model = teacher.model

    def teacher_forward(ids):
        with torch.no_grad():
            model(input_ids=ids).logits

    rows = []
    for k in cfg.ks:
        spellm = SpeLLM.build(teacher, build_alphabet(cfg.charset, 0), k)  # bytes or ascii: no corpus to count
        module = DistillModule(spellm, TrainConfig(), LossConfig(chunk_elements=cfg.chunk_elements))
        module.train()
        optimizer = torch.optim.AdamW(spellm.heads.parameters(), lr=1e-3)

        def distill_step(ids):
            parts = module.loss_parts(ids)[0]
            parts.total.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        times = {"teacher": [], "distill": []}
        for index, ids in enumerate(batches):  # interleaved, so both see the same machine state
            for kind, fn in (("teacher", teacher_forward), ("distill", distill_step)):
                start = time.perf_counter()
                fn(ids)
                if index >= cfg.warmup:
                    times[kind].append(time.perf_counter() - start)
        tokens = batches[0].numel()
        teacher_tps = tokens / statistics.median(times["teacher"])
        distill_tps = tokens / statistics.median(times["distill"])
        rows.append({
            "model": name, "vocab": teacher.info.vocab_size, "k": k, "sigma": spellm.alphabet.size,
            "teacher_tokens_per_s": teacher_tps, "distill_tokens_per_s": distill_tps,
            "throughput_ratio": distill_tps / teacher_tps,
            "teacher_peak_rise_mb": peak_rise_mb(lambda: teacher_forward(batches[0])),
            "distill_peak_rise_mb": peak_rise_mb(lambda: distill_step(batches[0])),
        })
        log.info("%s k=%d: %s", name, k, rows[-1])
    return rows


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench_distill")
def main(cfg: DictConfig) -> None:
    torch.manual_seed(0)
    started = provenance(OmegaConf.to_container(cfg, resolve=True))
    frame = pd.DataFrame([row for name in cfg.models for row in bench_model(name, cfg)])
    shown = frame.rename(columns={"sigma": "|Sigma|", "teacher_tokens_per_s": "teacher tok/s",
                                  "distill_tokens_per_s": "distill tok/s", "throughput_ratio": "distill / teacher",
                                  "teacher_peak_rise_mb": "teacher peak MB", "distill_peak_rise_mb": "distill peak MB"})
    notes = [
        f"Batch {cfg.batch_size} x {cfg.block_size} tokens, fp32, charset {cfg.charset}, teacher logits in chunks "
        f"of {cfg.chunk_elements:,} floats (positions x |V|); median of {cfg.repeats} timed steps after {cfg.warmup} warm-up, teacher and "
        "distillation steps interleaved in one process.",
        "teacher: a plain forward of the teacher, `model(ids).logits` (the full |V| logits), no grad. distill: one "
        "heads-only training step (frozen backbone pass, chunked teacher marginals, k heads, backward, AdamW).",
        "Peak MB: rise of the process's peak RSS over its resting RSS during one such step; the chunked loss keeps "
        "it below the teacher's own logits and flat in k.",
        "Teachers are dequantised GGUF checkpoints (real pretrained weights).",
    ]
    command = "python -m spellm_exp.bench_distill " + " ".join(sys.argv[1:])
    write_table(cfg.paths.results_dir, cfg.out_name, "Heads-only distillation throughput and memory", command.strip(),
                frame, [("Results", shown)], notes, started)


if __name__ == "__main__":
    main()
