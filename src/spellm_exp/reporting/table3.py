"""Table 3 and its plots, from the folders of a sweep (`python -m spellm_exp.table3 [sweep_dir=...]`).

Every job folder of the sweep (experiments.sweep) holds the training `summary.json`, the harness's
`eval/results.json` and the decode benchmark's `bench.json`; the teacher's scores are in the
sweep's `teacher/` folder. They become one tidy frame (a row per job), `results/table3.{md,csv}`,
a per-head agreement frame, and four plots. A job whose files are missing or broken is reported
by name and left out; the others are aggregated.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from spellm_exp.errors import SpellmError
from spellm_exp.evaluation.metrics import harness_results
from spellm_exp.experiments.jobs import BENCH_FILE, EVAL_FOLDER, JOB_FILE
from spellm_exp.experiments.sweep import job_metrics
from spellm_exp.provenance import provenance
from spellm_exp.reporting.tables import write_table
from spellm_exp.training.run_folder import DIVERGED

log = logging.getLogger(__name__)

TEACHER_FOLDER = "teacher"
_HEAD_AGREEMENT = re.compile(r"val/head(\d+)/agree_teacher$")


class JobError(SpellmError, ValueError):
    """A job folder that cannot be aggregated; the message says which file and why."""


def alphabet_label(kind: str, sigma: int, size_asked: int | None = None) -> str:
    """`bytes`, or `chars-N` with N the charset.size asked for (else the characters used: |Sigma| - PAD - EOS)."""
    return "bytes" if kind == "bytes" else f"{kind}-{size_asked or sigma - 2}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise JobError(f"{path.name} is missing") from None
    except json.JSONDecodeError as err:
        raise JobError(f"{path.relative_to(path.parents[1])} is not valid JSON ({err})") from None


def job_rows(job_dir: Path, teacher: dict) -> tuple[dict, list[dict]]:
    """(the job's table row, its per-head agreement rows)."""
    job = _read_json(job_dir / JOB_FILE) if (job_dir / JOB_FILE).exists() else {}
    if job.get("status") == DIVERGED:
        raise JobError(f"its training diverged ({job.get('error', 'no message')})")
    summary = _read_json(job_dir / "summary.json")
    size_asked = job.get("fingerprint", {}).get("config", {}).get("charset", {}).get("size")
    scores = _read_json(job_dir / EVAL_FOLDER / "results.json")["results"]
    bench = _read_json(job_dir / BENCH_FILE)
    try:
        row = {"job": job_dir.name, "teacher": summary["teacher"]["description"],
               "teacher_origin": summary["teacher"]["origin"], "k": summary["k"],
               "alphabet": alphabet_label(summary["alphabet"]["kind"], summary["alphabet"]["sigma"], size_asked),
               "sigma": summary["alphabet"]["sigma"], **job_metrics(summary, scores, teacher, bench)}
    except (KeyError, IndexError, TypeError, ZeroDivisionError) as err:
        raise JobError(f"a file lacks an expected entry ({err!r})") from None
    val = summary["val"]
    pooled = "val/agree_teacher_chars" in val  # per-head chars agreement pooled over the epoch, not per batch
    heads = [{"job": job_dir.name, "k": row["k"], "alphabet": row["alphabet"], "head": int(m.group(1)),
              "agree_teacher": value,
              "agree_teacher_chars": val.get(f"val/head{m.group(1)}/agree_teacher_chars") if pooled else None}
             for key, value in val.items() if (m := _HEAD_AGREEMENT.match(key))]
    return row, heads


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders: every subfolder with a job.json or a training summary."""
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name != TEACHER_FOLDER
                  and ((p / JOB_FILE).exists() or (p / "summary.json").exists()))


def collect(sweep_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(a row per job, a row per job and head, {job: why it was left out})."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise JobError(f"{sweep_dir} does not exist; run the sweep first (make reproduce-table3).")
    teacher = harness_results(sweep_dir / TEACHER_FOLDER)
    rows, heads, broken = [], [], {}
    for job_dir in job_folders(sweep_dir):
        try:
            row, head_rows = job_rows(job_dir, teacher)
        except JobError as err:
            broken[job_dir.name] = str(err)
            log.warning("left out %s: %s", job_dir.name, err)
            continue
        rows.append(row)
        heads += head_rows
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["sigma", "alphabet", "k"]).reset_index(drop=True)
    return frame, pd.DataFrame(heads), broken


def shown_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The markdown view: percentages, one decimal, in the order of the issue's columns."""
    return pd.DataFrame({
        "k": frame["k"], "alphabet": frame["alphabet"], "|Sigma|": frame["sigma"],
        "vocab cov. %": 100 * frame["vocab_coverage"], "corpus cov. %": 100 * frame["corpus_coverage"],
        "val KL": frame["val_kl"], "head agree %": 100 * frame["agree_teacher"],
        "head agree on chars %": 100 * frame["agree_teacher_chars"],
        "non-vocab strings %": 100 * frame["non_vocab_share"], "acc %": 100 * frame["accuracy"],
        "teacher acc %": 100 * frame["teacher_accuracy"], "acc - teacher": 100 * frame["accuracy_diff"],
        "step ratio": frame["step_ratio"], "step ratio (best run)": frame["step_ratio_best"],
        "bound": frame["bound"], "head ms teacher": frame["head_ms_teacher"],
        "head ms SpeLLM": frame["head_ms_spellm"]})


def plot(frame: pd.DataFrame, heads: pd.DataFrame, results_dir: Path) -> list[Path]:
    """accuracy vs k, step ratio vs k, per-head agreement vs head, and accuracy vs step ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphabets = list(dict.fromkeys(frame["alphabet"]))
    paths = []

    def by_alphabet(name: str, y: str, ylabel: str, reference: float | None = None) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for alphabet in alphabets:
            rows = frame[frame["alphabet"] == alphabet].sort_values("k")
            ax.plot(rows["k"], rows[y], marker="o", label=alphabet)
        if reference is not None:
            ax.axhline(reference, color="grey", linestyle="--", linewidth=1, label="teacher")
        ax.set_xlabel("k (heads)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(results_dir / f"table3_{name}.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    by_alphabet("accuracy_vs_k", "accuracy", "average accuracy", float(frame["teacher_accuracy"].iloc[0]))
    by_alphabet("step_ratio_vs_k", "step_ratio_best", "SpeLLM / teacher decode step (best run)", 1.0)

    # every position (late heads mostly agree on PAD), and, where logged, only the positions whose teacher
    # top symbol is a character: the falling curve
    panels = [("agree_teacher", "all positions")]
    if heads["agree_teacher_chars"].notna().any():
        panels.append(("agree_teacher_chars", "where the teacher's top symbol is a character"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        for (alphabet, k), rows in heads.groupby(["alphabet", "k"], sort=False):
            if k == heads["k"].max() or alphabet == alphabets[len(alphabets) // 2]:
                ax.plot(rows["head"], rows[column], marker=".", label=f"{alphabet}, k={k}")
        ax.set_xlabel("head i (character position)")
        ax.set_ylabel("top-1 agreement with the teacher's marginal")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    paths.append(results_dir / "table3_head_agreement.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for alphabet in alphabets:
        rows = frame[frame["alphabet"] == alphabet]
        ax.scatter(rows["step_ratio_best"], rows["accuracy"], label=alphabet)
        for _, row in rows.iterrows():
            ax.annotate(f"k={row['k']}", (row["step_ratio_best"], row["accuracy"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
    ax.axhline(float(frame["teacher_accuracy"].iloc[0]), color="grey", linestyle="--", linewidth=1, label="teacher")
    ax.set_xlabel("SpeLLM / teacher decode step (lower is faster)")
    ax.set_ylabel("average accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(results_dir / "table3_tradeoff.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def _short(code: str) -> str:
    return code[:12] + ("-dirty" if "dirty" in code else "")


def write_table3(cfg: DictConfig, command: str) -> list[Path]:
    """Every job of `cfg.sweep_dir` into the table, the per-head frame and the plots."""
    started = provenance(OmegaConf.to_container(cfg, resolve=True))
    sweep_dir = Path(cfg.sweep_dir)
    frame, heads, broken = collect(sweep_dir)
    if frame.empty:
        raise JobError(f"no job of {sweep_dir} could be aggregated: {broken}")
    results_dir = Path(cfg.paths.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(frame, heads, results_dir)
    heads.to_csv(results_dir / "table3_heads.csv", index=False)
    jobs = [_read_json(sweep_dir / job / JOB_FILE) for job in frame["job"] if (sweep_dir / job / JOB_FILE).exists()]
    config = jobs[0]["fingerprint"]["config"] if jobs else {}
    notes = [
        f"Jobs from `{cfg.sweep_command}`, in `{sweep_dir}`; each job's folder keeps its config, logs and records.",
        f"Teacher: {frame['teacher'].iloc[0]} ({frame['teacher_origin'].iloc[0]}); heads only, "
        f"{config.get('trainer', {}).get('max_steps', '?')} steps of {config.get('data', {}).get('batch_size', '?')} x "
        f"{config.get('data', {}).get('block_size', '?')} tokens, on backbone features cached by the first job.",
        f"Accuracy: mean over {sorted(c.removeprefix('acc ') for c in frame.columns if c.startswith('acc '))} of "
        f"acc_norm (acc where the harness reports no acc_norm), the first {config.get('sweep', {}).get('eval', {}).get('limit')} "
        "documents of each, 0-shot; teacher scored once by the same harness code.",
        "|Sigma| counts the characters used plus PAD and EOS; `chars-N` keeps the N most frequent characters of "
        "the distillation text, or all of them when it has fewer (hence |Sigma| < N + 2).",
        "vocab/corpus cov.: share of vocabulary ids / training-corpus tokens the k heads can spell. head agree: top-1 "
        "agreement of the heads with the teacher's per-head marginals on held-out blocks, mean over heads; late "
        "heads agree on PAD almost always, so it rises with k. head agree on chars: the same pooled over the "
        "(position, head) pairs whose teacher top symbol is a character (empty for jobs run before the code "
        "logged it). Per head: `table3_heads.csv`, `table3_head_agreement.png`.",
        "non-vocab strings: share of the strings the heads emitted in free decoding that are no vocabulary token. "
        "step ratio: SpeLLM / teacher decode step (median over the timed runs of each run's median step), same "
        "loop, batch 1, interleaved in each job; best run: the same from each side's fastest run, steadier on a "
        "shared machine (the plots use it); bound: the weight-bytes bound of method.md; head ms: the output layer "
        "alone on the same hidden state (teacher: |V| logits + argmax; SpeLLM: k heads + argmaxes + string -> ids).",
        f"Per-job timing settings: {config.get('sweep', {}).get('bench')}: a quick look per job; Table 2 times "
        "fewer configurations more carefully.",
        f"Job code versions: {sorted({_short(j['fingerprint']['code']) for j in jobs})}; "
        f"devices: {sorted({j['provenance']['device'] for j in jobs})}.",
        "Left out (broken or unfinished jobs): " + (", ".join(f"{k} ({v})" for k, v in broken.items()) or "none") + ".",
        "Plots: " + ", ".join(f"`{p.name}`" for p in plots) + ".",
    ]
    paths = write_table(results_dir, "table3", "Table 3: k and character-set size (SmolLM2)", command, frame,
                        [("Per (k, alphabet)", shown_table(frame))], notes, started)
    return [*paths, *plots, results_dir / "table3_heads.csv"]
