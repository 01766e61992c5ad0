"""`python -m spellm_exp.evaluate run_dir=<training run> [variant=spellm|teacher] [tasks=[...]] [limit=N]`
(`spellm-eval`): score a SpeLLM, or its teacher, or any teacher (`variant=teacher model=<name>`) on the
offline lm-eval tasks with the same harness code; writes results.json, samples.jsonl and metrics.csv into
`<run_dir>/eval/<variant>/` (or this command's own run folder)."""

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from spellm_exp.cli import exit_on
from spellm_exp.config import CONFIG_DIR
from spellm_exp.evaluation.harness import SpeLLMEvalError
from spellm_exp.evaluation.run import build_lm, evaluate_lm
from spellm_exp.evaluation.tasks import UnknownTaskError, check_tasks
from spellm_exp.provenance import command_line
from spellm_exp.teachers import TeacherConfigError

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    with exit_on(SpeLLMEvalError, UnknownTaskError, TeacherConfigError):
        tasks = check_tasks(list(cfg.tasks))
        if cfg.run_dir and not Path(cfg.run_dir).exists():
            raise SpeLLMEvalError(f"run_dir={cfg.run_dir} does not exist; give a training run folder.")
        lm = build_lm(cfg)
        out_dir = (Path(cfg.run_dir) / "eval" / cfg.variant if cfg.run_dir
                   else Path(HydraConfig.get().runtime.output_dir))
        config = {**OmegaConf.to_container(cfg, resolve=True), "command": command_line("spellm_exp.evaluate")}
        results = evaluate_lm(lm, tasks, out_dir, cfg.num_fewshot, cfg.limit, config)
    for task, metrics in results["results"].items():
        log.info("%s: %s", task, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
