"""A wheel (not an editable install) carries the bundled agents: list and evaluate them from outside
the repository."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


def make_venv_that_sees_this_environment(venv: Path) -> Path:
    """A venv whose own site-packages (where the wheel goes) come first, then those of the Python running
    the tests, which provide torch, mujoco, typer and the rest; returns its python.

    ``venv --system-site-packages`` is not enough: run from inside a virtualenv it links the base
    interpreter, whose site-packages lack what was installed into the virtualenv. So the new venv gets
    a .pth file that adds this Python's site directories (and runs their .pth files, as Python does
    for its own), after its own site-packages.
    """
    # Without pip of its own (installing one is most of a venv's cost): the pip of this Python, which the
    # .pth below makes importable, installs into the venv it runs in.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                   timeout=120)
    python = venv / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    sites = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    sites = [path for path in dict.fromkeys(sites) if Path(path).is_dir()]
    adds = "; ".join(f"site.addsitedir({path!r})" for path in sites)
    (Path(own) / "running-python-sites.pth").write_text(f"import site; {adds}\n")
    return python


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_an_installed_wheel_lists_and_evaluates_its_bundled_agents(tmp_path):
    # Independent steps run side by side (the machines have two cores): the build beside the venv,
    # and below, each command from the wheel beside the same command from the sources.
    pool = ThreadPoolExecutor(max_workers=2)
    building = pool.submit(build_wheel, tmp_path)
    venv = tmp_path / "venv"
    python = make_venv_that_sees_this_environment(venv)
    wheel = building.result()
    rql = venv / "bin" / "rql"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RQL_CHECKPOINTS")}
    env.update(CI="true", COLUMNS="200", OMP_NUM_THREADS="1")  # one thread: the two evaluations below agree
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    where = subprocess.run([str(python), "-c", "import rql_cli, rql_cli.io.bundled as b; "
                            "print(rql_cli.__file__); print(b.bundled_root())"],
                           cwd=outside, env=env, capture_output=True, text=True, check=True)
    module_file, root = where.stdout.split()
    assert Path(module_file).is_relative_to(venv), "rql_cli was not imported from the wheel"
    root = Path(root)
    assert root.is_relative_to(venv) and root.name == "bundled_checkpoints"
    shipped, in_repo = files_under(root), files_under(REPO / "checkpoints")
    assert sorted(shipped) == sorted(in_repo)
    assert [name for name in in_repo if shipped[name] != in_repo[name]] == []

    def both(*args: str, timeout: int = 120) -> list[subprocess.CompletedProcess]:
        """The same command from the installed wheel and from the repository's sources; ``{run}`` in an
        argument becomes ``wheel`` or ``source``."""
        runs = (("wheel", [str(rql)], outside), ("source", [sys.executable, "-m", "rql_cli"], REPO))
        started = [pool.submit(subprocess.run, [*command, *(arg.replace("{run}", run) for arg in args)], cwd=cwd,
                               env=env, capture_output=True, text=True, timeout=timeout)
                   for run, command, cwd in runs]
        done = [future.result() for future in started]
        for (run, _, _), result in zip(runs, done):
            assert result.returncode == 0, (run, result.stderr)
        return done

    bundled = sorted(p.name for p in (REPO / "checkpoints").iterdir() if (p / "config.json").is_file())
    listed, listed_in_repo = (json.loads(result.stdout)["bundled"] for result in both("list", "--json"))
    assert [agent["name"] for agent in listed] == bundled
    assert all(Path(agent["path"]).parent == root for agent in listed)
    assert [{**agent, "path": None} for agent in listed] == [{**agent, "path": None} for agent in listed_in_repo]

    both("eval", "--checkpoint", bundled[0], "--episodes", "1", "--envs", "1", "--device", "cpu", "--quiet",
         "--json", str(outside / "{run}.json"), timeout=300)
    report, report_in_repo = (json.loads((outside / f"{run}.json").read_text()) for run in ("wheel", "source"))
    assert report["checkpoint"] == str(root / bundled[0]), "the wheel's rql evaluated another copy"
    task, task_in_repo = report["tasks"][0], report_in_repo["tasks"][0]
    assert task["episodes"] == 1 and task["seeds"] == [0] and task["success_rate"] == float(task["successes"][0])
    # Same weights, seed and thread count: the same episode, step for step.
    outcome = ("env_id", "successes", "returns", "lengths", "success_rate", "mean_return")
    assert {key: task[key] for key in outcome} == {key: task_in_repo[key] for key in outcome}
