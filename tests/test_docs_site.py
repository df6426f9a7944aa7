"""The docs site builds with mkdocs --strict (a broken link fails it), and its commands page is the
Typer app's own help."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=180)


def test_the_docs_site_builds_strictly_with_the_commands_from_the_app(tmp_path):
    done = build(REPO, tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    commands = (tmp_path / "site" / "commands" / "index.html").read_text()
    from rql_cli.cli.train_command import SEEDS_HELP

    for name in ("rql train", "rql sweep", "rql report", "rql eval", "rql export", "rql doctor"):
        assert name in commands, name
    assert SEEDS_HELP.split(",")[0] in commands  # the option's help as --help prints it
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()


def test_a_broken_link_fails_the_build(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "docs", root / "docs")
    shutil.copytree(REPO / "tools", root / "tools")
    results = root / "docs" / "results.md"
    results.write_text(results.read_text() + "\nSee [the missing page](nowhere.md).\n")
    done = build(root, tmp_path / "site")
    assert done.returncode != 0 and "nowhere.md" in done.stdout + done.stderr
