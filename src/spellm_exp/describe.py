"""python -m spellm_exp.describe model=<name>: what a teacher is, and a greedy continuation of a prompt."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import CONFIG_PATH, model_config
from spellm_exp.models import Teacher, TeacherConfigError, load_teacher
from spellm_exp.provenance import provenance

log = logging.getLogger(__name__)


@torch.inference_mode()
def greedy_continuation(teacher: Teacher, prompt: str, max_new_tokens: int) -> str:
    tokenizer = teacher.tokenizer
    inputs = tokenizer(prompt, return_tensors="pt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = teacher.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=pad_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="describe")
def main(cfg: DictConfig) -> None:
    try:
        teacher = load_teacher(model_config(cfg))
    except TeacherConfigError as err:
        raise SystemExit(f"error: {err}") from None
    continuation = greedy_continuation(teacher, cfg.prompt, cfg.max_new_tokens)
    print(teacher.info.summary())
    print(f"{cfg.prompt!r} -> {continuation!r}")
    record = {"teacher": teacher.info.as_dict(), "prompt": cfg.prompt, "continuation": continuation,
              "provenance": provenance(OmegaConf.to_container(cfg, resolve=True))}
    out = Path(HydraConfig.get().runtime.output_dir) / "teacher.json"
    out.write_text(json.dumps(record, indent=2, default=str))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
