"""Provenance: which commit a number came from, and whether the code that made it had uncommitted changes."""

import subprocess

from spellm_exp.provenance import code_version, git_sha


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_rewritten_results_do_not_make_the_code_dirty_but_code_changes_do(tmp_path):
    for relative in ("src/spellm_exp/model.py", "results/table1.md", "notebooks/tables.ipynb"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("first\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    assert git_sha(tmp_path) == head

    (tmp_path / "results" / "table1.md").write_text("a new table\n")
    (tmp_path / "notebooks" / "tables.ipynb").write_text("re-executed\n")
    assert git_sha(tmp_path) == head and code_version(tmp_path) == head

    (tmp_path / "src" / "spellm_exp" / "model.py").write_text("changed\n")
    assert git_sha(tmp_path) == f"{head}-dirty"
    assert code_version(tmp_path) == head  # fixed at its first call: a run's fingerprint never changes midway
    code_version.cache_clear()
    version = code_version(tmp_path)
    assert version.startswith(f"{head}-dirty-") and len(version) == len(head) + 19
    (tmp_path / "src" / "spellm_exp" / "model.py").write_text("changed again\n")
    code_version.cache_clear()
    assert code_version(tmp_path) not in (version, head)  # two different dirty trees never look alike
