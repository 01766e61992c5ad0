"""The executed notebooks run top to bottom on the committed results/ and show the tables."""

import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_with_saved_outputs():
    assert {p.name for p in NOTEBOOKS} >= {"tables.ipynb", "table3_sweep.ipynb"}
    for path in NOTEBOOKS:
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in cells), f"{path.name} is not executed: run make notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_on_the_results_alone(path, tmp_path):
    # a copy of the layout the notebooks read: results/ and nothing else (no run folders)
    shutil.copytree(REPO_ROOT / "results", tmp_path / "results")
    (tmp_path / "notebooks").mkdir()
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "notebooks")}}).execute()
    shown = "\n".join(str(output.get("data", {}).get("text/markdown", ""))
                      for cell in notebook.cells for output in cell.get("outputs", []))
    heading = "# Table 1" if path.name == "tables.ipynb" else "Table 3"
    assert heading in shown
