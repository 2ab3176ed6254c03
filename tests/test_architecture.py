"""The shape of the code, checked: one home per concept, one-way imports, registries that dispatch.

These read the package's source (ast) and import it in fresh processes; they fail when a
change gives a concept a second home (a tag spelled twice, a method named outside its
catalog entry) or breaks the import rules (mlflow outside the store, click outside the CLI,
torch in planning, matplotlib in the lineage page).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlprune"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _string_constants(path: Path) -> list[str]:
    """String literals of the code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_only_the_store_and_the_plugin_import_mlflow_only_the_cli_imports_click():
    mlflow_users = {_rel(p) for p in SOURCES if "mlflow" in _imports(p)}
    assert mlflow_users <= {"mlflow_plugin.py"} | {_rel(p) for p in (PACKAGE / "store").glob("*.py")}, mlflow_users
    click_users = {_rel(p) for p in SOURCES if "click" in _imports(p)}
    assert click_users == {"cli.py"}


def _compared_strings(path: Path) -> list[str]:
    """String constants a comparison tests against (`x == "name"`, `x in ("a", "b")`): dispatch by name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for operand in [node.left, *node.comparators]:
            items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
            found += [i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)]
    return found


def test_tag_and_artifact_names_are_spelled_once():
    from mlprune import names

    spelled = {value for key, value in vars(names).items() if isinstance(value, str) and key.startswith("TAG_")
               or key.endswith("_FILE")}
    offenders = []
    for path in SOURCES:
        if path.name == "names.py":
            continue
        for constant in _string_constants(path):
            if constant in spelled:
                offenders.append(f"{_rel(path)}: {constant!r}")
    assert not offenders, offenders


@pytest.mark.parametrize("catalog", ["mlprune.pruning:METHODS", "mlprune.reinit:STRATEGIES", "mlprune.data:DATASETS",
                                     "mlprune.models:MODELS", "mlprune.training:OPTIMIZERS"])
def test_registries_dispatch_no_code_compares_an_entry_name(catalog):
    """What an entry is comes from the entry: no `if method == "snip"` anywhere."""
    from mlprune.registry import load_impl

    entries = set(load_impl(catalog))
    offenders = [f"{_rel(path)}: {constant!r}" for path in SOURCES for constant in _compared_strings(path)
                 if constant in entries]
    assert not offenders, offenders


def _fresh(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_planning_every_recipe_imports_neither_torch_nor_mlflow():
    out = _fresh(
        "import sys, glob\n"
        "from mlprune.recipes import compile_recipe\n"
        "for path in sorted(glob.glob('recipes/*.yaml')):\n"
        "    compile_recipe(path); compile_recipe(path, {'protocol': 'paper'})\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'matplotlib', 'dask') if m in sys.modules))\n")
    assert out.strip() == "[]"


def test_the_lineage_page_imports_neither_matplotlib_nor_torch():
    out = _fresh("import sys\nimport mlprune.lineage, mlprune.mlflow_plugin\n"
                 "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))\n")
    assert out.strip() == "[]"
