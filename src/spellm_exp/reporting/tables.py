"""Run outputs -> tables: markdown + csv, each with the provenance of the command that wrote it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def markdown_table(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return float_format.format(value)
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def write_table(results_dir: str | Path, stem: str, title: str, command: str, csv_frame: pd.DataFrame,
                sections: list[tuple[str, pd.DataFrame]], notes: list[str], provenance: dict) -> list[Path]:
    """Write `<stem>.csv` (tidy data), `<stem>.md` (readable sections) and `<stem>.provenance.json`."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, prov_path = (results_dir / f"{stem}{ext}" for ext in (".csv", ".md", ".provenance.json"))
    csv_frame.to_csv(csv_path, index=False)
    lines = [f"# {title}", "", f"Written by `{command}`; do not edit by hand.", ""]
    lines += [f"- {note}" for note in notes]
    for heading, frame in sections:
        lines += ["", f"## {heading}", "", markdown_table(frame)]
    lines += ["", "## Provenance", "",
              f"- git SHA: `{provenance['git_sha']}`", f"- date: {provenance['date']}",
              f"- device: {provenance['device']}", f"- python: {provenance['python']}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in provenance["versions"].items()),
              f"- config: see `{prov_path.name}`", ""]
    md_path.write_text("\n".join(lines))
    prov_path.write_text(json.dumps({"command": command, **provenance}, indent=2, default=str))
    return [csv_path, md_path, prov_path]
