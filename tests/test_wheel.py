"""A wheel (not an editable install) carries the bundled agents: list and evaluate them from outside
the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_wheel(tmp: Path) -> Path:
    """Build from a copy of the sources, so the build leaves nothing behind in the repository."""
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "rql_cli", source / "rql_cli", ignore=ignore)
    shutil.copytree(REPO / "checkpoints", source / "checkpoints", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("rql_cli-*.whl")
    return wheel


def test_an_installed_wheel_lists_and_evaluates_its_bundled_agents(tmp_path):
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    # System site packages provide torch, mujoco and the rest; rql itself comes only from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python, rql = venv / "bin" / "python", venv / "bin" / "rql"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RQL_CHECKPOINTS")}
    env.update(CI="true", COLUMNS="200")
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    where = subprocess.run([str(python), "-c", "import rql_cli, rql_cli.io.bundled as b; "
                            "print(rql_cli.__file__); print(b.bundled_root())"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True)
    module_file, root = where.stdout.split()
    assert Path(module_file).is_relative_to(venv), "rql_cli was not imported from the wheel"
    assert Path(root).is_relative_to(venv) and Path(root).name == "bundled_checkpoints"

    bundled = sorted(p.name for p in (REPO / "checkpoints").iterdir() if (p / "config.json").is_file())
    listed = subprocess.run([str(rql), "list"], cwd=outside, env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    for name in bundled:
        assert name in listed.stdout

    report = outside / "report.json"
    done = subprocess.run([str(rql), "eval", "--checkpoint", bundled[0], "--episodes", "1", "--envs", "1",
                           "--device", "cpu", "--quiet", "--json", str(report)],
                          cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    task = json.loads(report.read_text())["tasks"][0]
    assert task["episodes"] == 1 and 0.0 <= task["success_rate"] <= 1.0
