"""`python -m spellm_exp.describe model=<name>` (`spellm-describe`): what a teacher is, and a greedy continuation
of a prompt as a sanity check; writes teacher.json into its run folder."""

import json
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR, model_config
from spellm_exp.provenance import provenance
from spellm_exp.teachers import TeacherConfigError, greedy_continuation, load_teacher

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="describe")
def main(cfg: DictConfig) -> None:
    with exit_on(TeacherConfigError):
        teacher = load_teacher(model_config(cfg))
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
