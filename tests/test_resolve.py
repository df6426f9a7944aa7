"""The checkpoint resolver: its order (local folder, bundled name, Hub id), and --best in a run folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import hub_env  # tests/ is on sys.path under pytest

from rql_cli.errors import CheckpointError
from rql_cli.io.resolve import resolve_checkpoint

PUBLISHED = ("config.json", "velocity.safetensors", "value.safetensors")


def fake_run(root: Path, rates: dict[int, object]) -> Path:
    """A run folder whose checkpoints carry the given metrics (None: not evaluated).

    A rate is written in the training layout ({success_rate, ...}); a list of rates in the
    `rql eval --save` layout ({tasks: [...]}) so both layouts are read.
    """
    (root / "checkpoints").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    for step, rate in rates.items():
        folder = root / "checkpoints" / f"step_{step:08d}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "velocity.safetensors").write_bytes(b"")
        if isinstance(rate, list):
            metrics = {"tasks": [{"success_rate": r} for r in rate]}
        elif rate is not None:
            metrics = {"success_rate": rate, "episodes": 50}
        else:
            continue
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return root


def test_run_folder_resolves_to_latest_or_best_evaluated(tmp_path):
    run = fake_run(tmp_path / "run", {1000: 0.2, 2000: [0.6, 0.2], 3000: 0.3, 4000: None})
    assert resolve_checkpoint(str(run)).name == "step_00004000"
    assert resolve_checkpoint(str(run), best=True).name == "step_00002000"  # mean 0.4 over tasks


def test_best_prefers_the_newest_of_equal_scores(tmp_path):
    run = fake_run(tmp_path / "run", {1000: 0.5, 2000: 0.5, 3000: 0.1})
    assert resolve_checkpoint(str(run), best=True).name == "step_00002000"


def test_best_without_any_evaluation_says_how_to_get_one(tmp_path):
    run = fake_run(tmp_path / "run", {1000: None, 2000: None})
    with pytest.raises(CheckpointError, match="rql eval --checkpoint FOLDER --save"):
        resolve_checkpoint(str(run), best=True)


def _make_checkpoint(folder: Path, source: Path) -> Path:
    shutil.copytree(source, folder)
    return folder


def test_resolver_order_local_folder_then_bundled_name_then_hub_id(hub, tiny_run_dir, tmp_path, monkeypatch):
    from rql_cli.errors import CheckpointError
    from rql_cli.io.resolve import resolve_checkpoint

    source = tiny_run_dir / "checkpoints" / "step_00000002"
    bundled = tmp_path / "bundled"
    _make_checkpoint(bundled / "alice", source)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("RQL_CHECKPOINTS", str(bundled))
    monkeypatch.chdir(work)

    # A bundled name resolves while no local folder has that name ...
    assert resolve_checkpoint("alice") == bundled / "alice"
    # ... a local folder of the same name wins over it; a run folder means its latest checkpoint.
    _make_checkpoint(work / "alice", source)
    assert resolve_checkpoint("alice") == Path("alice")
    assert resolve_checkpoint(str(tiny_run_dir)) == source

    # Errors say what was tried; names that are not Hub ids never reach the network.
    with pytest.raises(CheckpointError, match="no bundled checkpoint of that name. Bundled: alice"):
        resolve_checkpoint("bob")
    (work / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint folder"):
        resolve_checkpoint("empty")
    (work / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint("notes.txt")

    # Bundled names are single folder names and Hub ids need USER/NAME, so those two never collide.
    # The Hub id comes last: a local folder alice/agent wins over the Hub repo alice/agent, and only
    # without one does the resolver pull. The real resolver runs in a subprocess, pointed at the test Hub.
    home = tmp_path / "hf"
    published = hub.state.add_repo("alice/agent", {name: (source / name).read_bytes() for name in PUBLISHED})
    _make_checkpoint(work / "alice" / "agent", source)
    script = (
        "import json, os, sys\n"
        "from rql_cli.io.resolve import resolve_checkpoint\n"
        "from rql_cli.errors import RQLError\n"
        "out = {}\n"
        "for ref, cwd in [('alice/agent', sys.argv[1]), ('alice/agent', sys.argv[2]), ('alice', sys.argv[2]),\n"
        "                 ('alice/missing', sys.argv[2])]:\n"
        "    os.chdir(cwd)\n"
        "    try:\n"
        "        out[ref + ' in ' + os.path.basename(cwd)] = str(resolve_checkpoint(ref))\n"
        "    except RQLError as error:\n"
        "        out[ref + ' in ' + os.path.basename(cwd)] = 'ERROR ' + str(error)\n"
        "print(json.dumps(out))\n"
    )
    env = hub_env(hub, home)
    env["RQL_CHECKPOINTS"] = str(bundled)
    requests_before = len(hub.state.requests)
    result = subprocess.run([sys.executable, "-c", script, str(work), str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout.strip().splitlines()[-1])
    assert resolved["alice/agent in work"] == "alice/agent"  # the local folder, not the Hub repo
    hub_path = Path(resolved["alice/agent in " + tmp_path.name])
    assert hub_path.parent.name == "snapshots" and hub_path.name == published
    assert str(hub_path).startswith(str(home))
    assert resolved["alice in " + tmp_path.name] == str(bundled / "alice")
    assert resolved["alice/missing in " + tmp_path.name].startswith(
        "ERROR 'alice/missing' is no local folder and no bundled checkpoint, so it was taken as a Hub id: "
        "No model repo 'alice/missing'"
    )
    assert any("/alice/agent/" in path for _, path in hub.state.requests[requests_before:])
