"""The package's layout, read from its imports: commands are leaves, stages import only the stages below them,
no import loops, and the method core needs neither Lightning nor Hydra."""

import ast
from pathlib import Path

import spellm_exp

PACKAGE = Path(spellm_exp.__file__).parent
# the stages, lowest first; a module may import its own stage and the ones before it
STAGES = [("config", "provenance", "errors"), ("teachers",), ("core",), ("data",), ("training", "evaluation", "benchmarks"),
          ("experiments",), ("reporting",), ("cli",)]
RANK = {stage: rank for rank, names in enumerate(STAGES) for stage in names}
SHIM_LINES = 12  # `python -m spellm_exp.<command>` shims: a docstring, one import, the __main__ call


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules that `path` imports (anywhere, or at module level only), with `from m import x` also as m.x."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def breaches(package: Path) -> list[str]:
    """Every breach of the house rules in the package folder `package` (named spellm_exp)."""
    modules = {".".join(("spellm_exp", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    imports = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}

    def stage(name: str) -> str:
        return name.split(".")[1] if "." in name else "config"

    def is_shim(name: str) -> bool:
        lines = [line for line in modules[name].read_text(encoding="utf-8").splitlines() if line.strip()]
        return (name.count(".") == 1 and len(lines) <= SHIM_LINES
                and imports[name] == {f"spellm_exp.cli.{name.split('.')[1]}"})

    found = []
    for name, path in modules.items():
        text = path.read_text(encoding="utf-8")
        is_command = "@hydra.main" in text or 'if __name__ == "__main__"' in text
        if is_command and stage(name) != "cli" and not is_shim(name):
            found.append(f"{name} is a command outside cli/")
        if is_shim(name) or name == "spellm_exp":
            continue
        for imported in imports[name]:
            if stage(imported) == "cli" and imported != "spellm_exp.cli":
                found.append(f"{name} imports the command {imported}")
            elif RANK[stage(imported)] > RANK[stage(name)]:
                found.append(f"{name} ({stage(name)}) imports {imported} ({stage(imported)}), a higher stage")
        if stage(name) in ("core", "config"):
            third_party = {m.split(".")[0] for m in _imports(path, top_level_only=True)}
            if third_party & {"lightning", "hydra", "omegaconf"}:
                found.append(f"{name} imports Lightning, Hydra or OmegaConf at module level")
    for start in imports:
        seen, todo = set(), list(imports[start])
        while todo:
            current = todo.pop()
            if current == start:
                found.append(f"{start} is in an import loop")
                break
            if current not in seen:
                seen.add(current)
                todo.extend(imports[current])
    return found


def test_the_package_keeps_the_house_rules():
    assert breaches(PACKAGE) == []


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "spellm_exp"
    for relative, text in {"__init__.py": "", "cli/__init__.py": "", "core/__init__.py": "",
                           "reporting/__init__.py": "", **files}.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text)
    return package


def test_each_kind_of_breach_is_found(tmp_path):
    command = 'import hydra\n\n@hydra.main()\ndef main(cfg):\n    pass\n'
    package = _fake_package(tmp_path, {
        "cli/train.py": command,
        "train.py": "from spellm_exp.cli.train import main\n",  # a shim: allowed
        "reporting/table.py": "from spellm_exp.cli.train import main\n",  # a library module importing a command
        "core/losses.py": "import lightning\nfrom spellm_exp.reporting.table import x\n",  # two breaches
        "core/a.py": "from spellm_exp.core.b import f\n",
        "core/b.py": "def f():\n    from spellm_exp.core.a import g\n",  # a loop, through a local import
        "sweep.py": command,  # a command outside cli/
    })
    found = breaches(package)
    assert sorted(found) == sorted([
        "spellm_exp.reporting.table imports the command spellm_exp.cli.train",
        "spellm_exp.core.losses (core) imports spellm_exp.reporting.table (reporting), a higher stage",
        "spellm_exp.core.losses imports Lightning, Hydra or OmegaConf at module level",
        "spellm_exp.core.a is in an import loop", "spellm_exp.core.b is in an import loop",
        "spellm_exp.sweep is a command outside cli/",
    ])


def test_every_config_file_and_script_ships_as_package_data():
    # a plain (non-editable) `pip install .` copies only what [tool.setuptools.package-data] names
    import tomllib

    from spellm_exp.config import CONFIG_DIR

    pyproject = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["spellm_exp"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    configs = {path for path in Path(CONFIG_DIR).rglob("*") if path.is_file()}
    assert Path(CONFIG_DIR).parent == PACKAGE and len(configs) > 40
    assert configs | set(PACKAGE.rglob("*.sh")) == shipped
