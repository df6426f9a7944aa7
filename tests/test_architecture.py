"""The layers of README.md's architecture section, checked against the imports the code really makes."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rql_cli"

# Layer -> the layers it may import (besides itself). Mirrors README.md's "Architecture" section.
ALLOWED = {
    "errors": set(),
    "names": {"errors"},
    "config": {"errors", "names"},
    "device": {"core", "errors"},
    "loop": {"errors"},
    "runtime": {"errors"},
    "spaces": set(),
    "minari_store": {"errors"},
    "core": {"config"},
    "data": {"core", "device", "errors", "minari_store", "names", "spaces"},
    "envs": {"core", "errors", "minari_store", "names", "runtime", "spaces"},
    "io": {"config", "core", "device", "errors", "names", "package"},
    "evaluation": {"config", "core", "device", "envs", "errors", "io", "names"},
    "rollout": {"config", "core", "device", "envs", "errors", "io", "names"},
    "train": {"config", "core", "data", "device", "envs", "errors", "evaluation", "io", "loop", "names",
              "runtime"},
    "finetune": {"config", "core", "data", "device", "envs", "errors", "evaluation", "io", "loop", "names",
                 "runtime", "train"},
    "cli": {"config", "core", "data", "device", "envs", "errors", "evaluation", "finetune", "io", "loop",
            "minari_store", "names", "rollout", "train"},
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


def test_every_layer_is_documented_in_the_readme():
    """Every layer is named in docs/architecture.md, the page the README's architecture overview links to."""
    section = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for layer in ALLOWED:
        if layer != "__main__":
            assert layer in section, layer
