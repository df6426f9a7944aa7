"""The layers of docs/architecture.md checked against the imports the code really makes, the size
limits that keep each function and module to one job, and ruff and mypy on the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rql_cli"

# Layer -> the layers it may import (besides itself). Mirrors docs/architecture.md's import table.
ALLOWED = {
    "errors": set(),
    "names": {"errors"},
    "config": {"errors"},
    "presets": {"config", "errors", "names"},
    "device": {"core", "errors"},
    "spaces": {"errors"},
    "results": set(),
    "minari_store": {"errors"},
    "core": {"config"},
    "data": {"core", "device", "envs", "errors", "minari_store", "names", "spaces"},
    "envs": {"core", "device", "errors", "minari_store", "names", "results", "spaces"},
    "io": {"config", "core", "device", "errors", "names", "package", "presets", "results"},
    "evaluation": {"config", "core", "device", "envs", "errors", "io", "names", "results"},
    "rollout": {"config", "core", "device", "envs", "errors", "io", "names", "results"},
    "export": {"config", "core", "device", "envs", "errors", "io", "names", "results"},
    "training": {"config", "core", "data", "device", "envs", "errors", "evaluation", "io", "names", "results"},
    "doctor": {"data", "device", "envs", "errors", "io", "minari_store", "training"},
    "report": {"errors", "io", "names", "results"},
    "sweep": {"config", "data", "errors", "io", "names", "presets", "results", "training"},
    "cli": {"config", "core", "data", "device", "doctor", "envs", "errors", "evaluation", "export", "io",
            "minari_store", "names", "package", "presets", "report", "results", "rollout", "sweep", "training"},
    "__main__": {"cli"},
}

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 350
LONG_MODULES = {
    "config.py": "the agent's and the run's config: their fields (help, type, range), JSON and --set forms",
    "envs/evaluate.py": "running a chunk policy's episodes (vectorised, or one env at a time) and measuring them",
    "data/sources.py": "DataSpec: from a dataset name and flags to its files, their fingerprint and their loading",
    "training/session.py": "one run while it runs (open, restore, save, evaluate, record) and the BatchSource "
                           "interface its batch sources fill",
}
"""Modules over MAX_MODULE_LINES, each with the one job it does (path under rql_cli/)."""


@dataclass
class ModuleImports:
    """The rql_cli modules one module imports: at run time, and only for annotations (TYPE_CHECKING)."""

    runtime: set[str] = field(default_factory=set)
    type_only: set[str] = field(default_factory=set)
    type_only_names: set[str] = field(default_factory=set)
    """Names the TYPE_CHECKING blocks bind (of any package)."""


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def is_type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The rql_cli modules an import statement names (``from rql_cli import minari_store`` names
    ``rql_cli.minari_store``; ``import rql_cli`` names the package, for its version)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "rql_cli"}
    if not node.module or node.module.split(".")[0] != "rql_cli":
        return set()
    package = PACKAGE.parent.joinpath(*node.module.split("."))
    submodules = {f"{node.module}.{alias.name}" for alias in node.names
                  if (package / f"{alias.name}.py").is_file() or (package / alias.name).is_dir()}
    return submodules or {node.module}


def bound_names(node: ast.Import | ast.ImportFrom) -> set[str]:
    return {(alias.asname or alias.name).split(".")[0] for alias in node.names}


def type_checking_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    return [node for block in ast.walk(tree) if is_type_checking_block(block)
            for node in ast.walk(block) if isinstance(node, (ast.Import, ast.ImportFrom))]


def imports() -> dict[str, ModuleImports]:
    found: dict[str, ModuleImports] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        type_only = {id(node) for node in type_checking_imports(tree)}
        record = ModuleImports()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                if id(node) in type_only:
                    record.type_only |= imported_modules(node)
                    record.type_only_names |= bound_names(node)
                else:
                    record.runtime |= imported_modules(node)
        found[module_name(path)] = record
    return found


def test_every_import_points_down_the_documented_layers():
    """Run-time imports follow the table; TYPE_CHECKING imports only name types for annotations, so a
    lower layer may name a higher layer's type (``io.run_record`` names the agent) without importing it."""
    wrong = []
    for module, imported in imports().items():
        layer = layer_of(module)
        if layer == "package":
            continue
        for name in imported.runtime:
            target = layer_of(name)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def runtime_uses(tree: ast.Module) -> set[str]:
    """Names the module reads when it runs: everything but annotations and TYPE_CHECKING blocks."""
    used: set[str] = set()

    def visit(node: ast.AST) -> None:
        if is_type_checking_block(node):
            return
        if isinstance(node, ast.Name):
            used.add(node.id)
        for name, child in ast.iter_fields(node):
            if name in ("annotation", "returns"):  # arguments, AnnAssign targets, function returns
                continue
            for item in child if isinstance(child, list) else [child]:
                if isinstance(item, ast.AST):
                    visit(item)

    visit(tree)
    return used


def test_type_checking_imports_are_used_only_in_annotations():
    """A name imported under ``if TYPE_CHECKING:`` does not exist when the module runs: it may appear
    in annotations (strings under ``from __future__ import annotations``), never in code."""
    wrong, found = [], imports()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        names = found[module_name(path)].type_only_names
        if not names:
            continue
        if "from __future__ import annotations" not in source:
            wrong.append(f"{module_name(path)}: TYPE_CHECKING imports need `from __future__ import annotations`")
        # A function may import the same name for real (a lazy import): that binding exists at run time.
        type_only = {id(node) for node in type_checking_imports(tree)}
        rebound = {name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                   and id(node) not in type_only for name in bound_names(node)}
        wrong += [f"{module_name(path)} uses {name} at run time"
                  for name in sorted((names - rebound) & runtime_uses(tree))]
    assert wrong == []


def test_the_layer_table_has_no_cycle():
    """Every chain of allowed imports ends: ``data`` may import ``envs`` (the one place that builds
    an env) only because ``envs`` may not import ``data``, and so on down the table."""
    def reaches_itself(start: str) -> bool:
        seen, todo = set(), list(ALLOWED.get(start, ()))
        while todo:
            layer = todo.pop()
            if layer == start:
                return True
            if layer not in seen:
                seen.add(layer)
                todo.extend(ALLOWED.get(layer, ()))
        return False

    assert [layer for layer in ALLOWED if reaches_itself(layer)] == []


def documented_table() -> dict[str, set[str]]:
    """docs/architecture.md's "What may import what" table: layer -> the layers its row names."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table = page[page.index("## What may import what"):].split("\n## ")[0]
    rows: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        names = lambda cell: {part.split("`")[1] for part in cell.split(",") if "`" in part}  # noqa: E731
        for layer in names(cells[0]):
            rows[layer] = names(cells[1])
    return rows


def test_the_documented_import_table_is_the_one_the_code_is_held_to():
    """Every layer has its row in docs/architecture.md (the README's overview links there), naming
    exactly the layers ALLOWED lets it import; ``cli`` may import everything below it."""
    rows = documented_table()
    assert set(rows) == set(ALLOWED) - {"__main__"}
    for layer, allowed in ALLOWED.items():
        if layer not in ("cli", "__main__"):
            assert rows[layer] == allowed - {"package"} | ({"rql_cli"} if "package" in allowed else set()), layer


def test_no_function_is_longer_than_sixty_lines():
    """A function that long does several things; each gets a name of its own instead."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_a_long_module_does_one_job_that_is_named_here():
    """A module over MAX_MODULE_LINES is either split by job or listed in LONG_MODULES with its one
    job; a listed module that has shrunk under the limit leaves the list."""
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    unlisted = {name: size for name, size in sizes.items() if size > MAX_MODULE_LINES and name not in LONG_MODULES}
    assert unlisted == {}
    assert {name: sizes.get(name) for name in LONG_MODULES if sizes.get(name, 0) <= MAX_MODULE_LINES} == {}


@pytest.mark.parametrize("check", [["ruff", "check", "rql_cli"], ["mypy", "rql_cli"]], ids=["ruff", "mypy"])
def test_ruff_and_mypy_find_nothing_in_the_package(check):
    """The README's test command runs them here, where they overlap other tests: run first, a cold mypy
    held the suite up by about 25 s on 2 cores. Settings: pyproject.toml's [tool.ruff] and [tool.mypy]."""
    done = subprocess.run([sys.executable, "-m", *check], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
