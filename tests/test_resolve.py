"""The checkpoint resolver's choice inside a run folder: latest, or --best by measured success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rql_cli.errors import CheckpointError
from rql_cli.io.resolve import resolve_checkpoint


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
