"""python -m spellm_exp.evaluate run_dir=<training run> [variant=spellm|teacher] [tasks=[...]] [limit=N]

Scores a SpeLLM (or its teacher, or any teacher with `variant=teacher model=<name>`) on the offline
lm-eval tasks with the same harness code, and writes the harness's full results JSON, the
per-document samples and a flat metrics.csv, with provenance.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import lm_eval
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from lm_eval.tasks import TaskManager
from omegaconf import DictConfig, OmegaConf

from spellm_exp.config import CONFIG_PATH, model_config
from spellm_exp.eval.harness import SpeLLMEvalError, SpeLLMHarnessLM
from spellm_exp.eval.tasks import UnknownTaskError, check_tasks, write_task_yamls
from spellm_exp.models import TeacherConfigError, load_teacher
from spellm_exp.provenance import provenance

log = logging.getLogger(__name__)


def flat_metrics(results: dict) -> pd.DataFrame:
    """The harness's results as rows of (task, metric, value, stderr)."""
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or "_stderr" in key or key == "alias":
                continue
            metric, _, filter_name = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append({"task": task, "metric": metric, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None})
    return pd.DataFrame(rows)


def evaluate_lm(lm: SpeLLMHarnessLM, tasks: list[str], out_dir: Path, num_fewshot: int = 0,
                limit: int | None = None, config: dict | None = None) -> dict:
    """Run the harness on `tasks` and write results.json, samples.jsonl, metrics.csv into `out_dir`."""
    started = provenance(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    task_manager = TaskManager(include_path=str(write_task_yamls(out_dir / "tasks", tasks)), include_defaults=False)
    results = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=task_manager, num_fewshot=num_fewshot,
                                      limit=limit, log_samples=True, bootstrap_iters=1000)
    samples = results.pop("samples")
    with (out_dir / "samples.jsonl").open("w") as out:
        for task, docs in samples.items():
            for doc in docs:
                out.write(json.dumps({"task": task, "doc_id": doc["doc_id"],
                                      **{k: doc[k] for k in ("acc", "acc_norm") if k in doc}}) + "\n")
    results["spellm_exp"] = {"variant": lm.variant, "segmentation_failures": lm.failures,
                             "provenance": started}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    flat_metrics(results).to_csv(out_dir / "metrics.csv", index=False)
    log.info("wrote %s", out_dir)
    return results


def evaluate_or_reuse(lm: SpeLLMHarnessLM, tasks: list[str], out_dir: Path, num_fewshot: int, limit: int | None,
                      settings: dict, config: dict | None = None) -> dict:
    """The harness's results in `out_dir`: read back when they were written with the same `settings` (kept in
    their provenance next to `config`), else evaluated now."""
    done = out_dir / "results.json"
    if done.exists():
        stored = json.loads(done.read_text())
        if stored["spellm_exp"]["provenance"]["config"].get("settings") == settings:
            log.info("reusing %s", out_dir)
            return stored["results"]
    return evaluate_lm(lm, tasks, out_dir, num_fewshot, limit, {**(config or {}), "settings": settings})["results"]


def build_lm(cfg: DictConfig) -> SpeLLMHarnessLM:
    common = dict(batch_size=cfg.batch_size, score=cfg.score, decode_mode=cfg.decode, cache_dir=cfg.paths.cache_dir)
    if cfg.run_dir:
        return SpeLLMHarnessLM(checkpoint=cfg.run_dir, variant=cfg.variant, **common)
    if cfg.variant != "teacher":
        raise SpeLLMEvalError("variant=spellm needs run_dir=<training run or SpeLLM checkpoint folder>.")
    return SpeLLMHarnessLM(variant="teacher", teacher=load_teacher(model_config(cfg)), **common)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        tasks = check_tasks(list(cfg.tasks))
        if cfg.run_dir and not Path(cfg.run_dir).exists():
            raise SpeLLMEvalError(f"run_dir={cfg.run_dir} does not exist; give a training run folder.")
        lm = build_lm(cfg)
    except (SpeLLMEvalError, UnknownTaskError, TeacherConfigError) as err:
        raise SystemExit(f"error: {err}") from None
    out_dir = (Path(cfg.run_dir) / "eval" / cfg.variant if cfg.run_dir
               else Path(HydraConfig.get().runtime.output_dir))
    config = {**OmegaConf.to_container(cfg, resolve=True), "command": " ".join(["python -m spellm_exp.evaluate",
                                                                              *sys.argv[1:]])}
    results = evaluate_lm(lm, tasks, out_dir, cfg.num_fewshot, cfg.limit, config)
    for task, metrics in results["results"].items():
        log.info("%s: %s", task, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
