"""The quality / speed trade-off of the head types: each SpeLLM's average accuracy gap to its teacher (Table 1,
and the quality ablations for SmolLM2's other head types) next to its decode-step ratio (Table 2, same
teacher and head type, timed on this machine's device), as a table section of Table 2 and one plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

QUALITY_SOURCES = {"table1": "Table 1 (9 tasks)", "quality_ablation": "ablation (5 tasks)",
                   "quality_ablation_cached": "ablation, 1,500 steps (5 tasks)"}


def quality_gaps(results_dir: Path) -> pd.DataFrame:
    """(source, model, row, head_type, gap points, stderr) of every SpeLLM's average paired difference to its
    teacher; `row` names the run (rows of one head type can differ in their data or training)."""
    frames = []
    for name, source in QUALITY_SOURCES.items():
        path = Path(results_dir) / f"{name}.csv"
        if not path.exists():
            continue
        tidy = pd.read_csv(path)
        if "head_type" not in tidy.columns:  # written before head types: not comparable here
            continue
        rows = tidy[(tidy["task"] == "average") & tidy["head_type"].notna()]
        names = rows["variant"].str.removeprefix("spellm ").str.replace(r"\s*-\s*teacher$", "", regex=True)
        frames.append(pd.DataFrame({"source": source, "model": rows["model"], "row": names,
                                    "head_type": rows["head_type"],
                                    "accuracy gap (points)": 100 * rows["value"], "gap stderr": 100 * rows["stderr"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def tradeoff_frame(gaps: pd.DataFrame, bench: pd.DataFrame, device: str) -> pd.DataFrame:
    """One row per SpeLLM of `gaps` that Table 2 timed on `device`: its gap and its step ratio at each batch size,
    in the eager loop (`step ratio b=N`, every head type was timed there) and, where timed, the compiled one
    (`compiled step ratio b=N`)."""
    if gaps.empty or bench.empty:
        return pd.DataFrame()
    timed = bench[bench["device"] == device]
    if "loop" not in timed:
        timed = timed.assign(loop="eager")
    if {"repeats", "date"} <= set(timed):  # records of one head type (e.g. two distillations of it): the most repeats
        timed = timed.sort_values(["repeats", "date"], ascending=False, kind="stable")
    frame = gaps
    for loop, prefix in (("eager", ""), ("compiled", "compiled ")):
        ratios = timed[timed["loop"] == loop].pivot_table(index=["model", "head_type"], columns="batch",
                                                           values="ratio", aggfunc="first")
        ratios.columns = [f"{prefix}step ratio b={batch}" for batch in ratios.columns]
        frame = frame.join(ratios, on=["model", "head_type"], how="inner" if loop == "eager" else "left")
    return frame.reset_index(drop=True)


def plot_tradeoff(frame: pd.DataFrame, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = dict(zip(QUALITY_SOURCES.values(), ("o", "s", "^")))
    for column, filled in (("step ratio b=1", True), ("step ratio b=8", False)):
        if column not in frame:
            continue
        for source, rows in frame.groupby("source"):
            ax.scatter(rows[column], rows["accuracy gap (points)"], marker=markers[source],
                       facecolors=None if filled else "none", edgecolors="C0" if not filled else None,
                       label=f"{source}, {column.replace('step ratio ', '')}")
            if not filled:  # each row is named once, at its batch-1 point
                continue
            for _, row in rows.iterrows():
                ax.annotate(f"{row['model'].split('-')[0]} {row['row']}", (row[column], row["accuracy gap (points)"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.axhline(-3.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("decode-step ratio, SpeLLM / teacher (lower is faster)")
    ax.set_ylabel("accuracy gap to the teacher (points)")
    ax.set_title(f"Quality vs speed per head type ({device})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
