"""The layers of docs/architecture.md, checked against the imports the code really makes."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rql_cli"

# Layer -> the layers it may import (besides itself). Mirrors docs/architecture.md's import table.
ALLOWED = {
    "errors": set(),
    "names": {"errors"},
    "config": {"errors", "names"},
    "device": {"core", "errors"},
    "spaces": set(),
    "results": set(),
    "minari_store": {"errors"},
    "core": {"config"},
    "data": {"core", "device", "envs", "errors", "minari_store", "names", "spaces"},
    "envs": {"core", "device", "errors", "minari_store", "names", "results", "spaces"},
    "io": {"config", "core", "device", "errors", "names", "package", "results"},
    "evaluation": {"config", "core", "device", "envs", "errors", "io", "names", "results"},
    "rollout": {"config", "core", "device", "envs", "errors", "io", "names", "results"},
    "export": {"config", "core", "device", "envs", "errors", "io", "names", "results"},
    "training": {"config", "core", "data", "device", "envs", "errors", "evaluation", "io", "names", "results"},
    "cli": {"config", "core", "data", "device", "envs", "errors", "evaluation", "export", "io", "minari_store",
            "names", "results", "rollout", "training"},
    "__main__": {"cli"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def imports() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rql_cli"):
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names if alias.name.startswith("rql_cli")}
        found[module] = names
    return found


def test_every_import_points_down_the_documented_layers():
    wrong = []
    for module, imported in imports().items():
        layer = layer_of(module)
        if layer == "package":
            continue
        for name in imported:
            target = layer_of(name)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{module} imports {name}")
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
