"""Lineage: a fine-tune of a Hub checkpoint records the repo and commit, and `--resume` keeps them.

The checkpoint is published on the local Hub-API server (tests/hub_server.py) and fine-tuned with
the real `rql finetune` in a subprocess (huggingface_hub reads HF_ENDPOINT when it is imported).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hub_server import hub_env  # tests/ is on sys.path under pytest
from typer.testing import CliRunner

PUBLISHED = ("config.json", "velocity.safetensors", "value.safetensors")


def lineages(run: Path) -> dict[str, dict]:
    """Each checkpoint's config.json lineage, by folder name."""
    return {folder.name: json.loads((folder / "config.json").read_text())["lineage"]
            for folder in sorted((run / "checkpoints").iterdir())}


def test_a_fine_tune_of_a_hub_id_records_repo_and_commit_and_resume_keeps_them(
    hub, tiny_run_dir, tiny_dataset_dir, tmp_path
):
    from rql_cli.cli.app import app

    source = tiny_run_dir / "checkpoints" / "step_00000002"
    commit = hub.state.add_repo("alice/agent", {name: (source / name).read_bytes() for name in PUBLISHED})
    run = tmp_path / "ft"
    result = subprocess.run(
        [sys.executable, "-m", "rql_cli", "finetune", "--checkpoint", "alice/agent", "--online-steps", "4",
         "--eval-episodes", "0", "--dataset-dir", str(tiny_dataset_dir), "--set", "save_interval=2",
         "--set", "compile=off", "--out", str(run)],
        env=hub_env(hub, tmp_path / "hf"), capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    parent = json.loads((run / "train_config.json").read_text())["parent"]
    assert (parent["ref"], parent["source"], parent["repo_id"], parent["commit"]) == (
        "alice/agent", "hub", "alice/agent", commit)
    assert (parent["method"], parent["online_steps"], parent["step"]) == ("online", 4, 2)
    assert lineages(run) == {"step_00000002": parent, "step_00000004": parent}

    # Resume from step 2 (as after a crash before step 4 was saved): the lineage is kept, not lost
    # or replaced by the run's own folder.
    for path in sorted((run / "checkpoints" / "step_00000004").iterdir()):
        path.unlink()
    (run / "checkpoints" / "step_00000004").rmdir()
    resumed = CliRunner().invoke(app, ["finetune", "--resume", str(run)], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((run / "train_config.json").read_text())
    assert record["parent"] == parent
    assert [(h["event"], h["step"]) for h in record["history"]] == [("start", 0), ("resume", 2)]
    assert lineages(run) == {"step_00000002": parent, "step_00000004": parent}
