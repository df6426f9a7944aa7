"""A crash at any step of a checkpoint write leaves, after the next start, the old checkpoint or the new one.

Each step of ``save_checkpoint`` (every file written, fsync, rename and folder removal) is made to fail
in turn: once as the process dying there (an exception nothing in rql catches, so no clean-up runs;
a folder removal dies half done) and once as an OSError (a full disk), which rql handles. After each,
what a run does first when it starts again (``remove_unfinished_writes``) must leave the checkpoint
folder loadable and byte for byte either the previous checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rql_cli.config import RunConfig
from rql_cli.errors import CheckpointError
from rql_cli.io import checkpoint as checkpoint_module
from rql_cli.io.checkpoint import load_agent, load_train_state_into, save_checkpoint
from rql_cli.io.checkpoint_meta import CheckpointMeta
from rql_cli.io.metrics import EvaluationReport
from rql_cli.io.run_checkpoints import list_checkpoints, remove_unfinished_writes
from rql_cli.io.run_layout import checkpoint_dir

TINY = dict(actor_hidden_dims=[8], value_hidden_dims=[8], ensemble_size=2, flow_steps=2, horizon=2, device="cpu")
STEP = 5


class ProcessDied(BaseException):
    """The process ending at this point: no ``except Exception`` clean-up runs."""


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def make_agent(seed: int):
    from rql_cli.core.rql import RQLAgent

    torch.manual_seed(seed)
    config = RunConfig.of(**TINY).agent
    agent = RQLAgent(config, 4, 2, torch.device("cpu"))
    agent.step = seed
    meta = CheckpointMeta(config=config, dataset="cube-single-play-v0", env_id="cube-single-play-singletask-v0",
                          obs_dim=4, action_dim=2, step=seed)
    return agent, meta


def save(directory: Path, seed: int) -> None:
    """The checkpoint of ``seed``'s agent: weights, train state and metrics (every kind of file)."""
    agent, meta = make_agent(seed)
    report = EvaluationReport.from_dict(dict(checkpoint="ckpt", dataset=meta.dataset, step=seed, device="cpu",
                                             tasks=[dict(success_rate=seed / 10)]))
    save_checkpoint(directory, agent, meta, generators={"sample": torch.Generator().manual_seed(seed)},
                    metrics=report)


class StepFaults:
    """Counts the write's steps and fails the ``fail_at``-th (1-based; 0 never) as ``kind`` says."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int, kind: str):
        import safetensors.torch

        self.count, self.fail_at, self.kind, self.failed = 0, fail_at, kind, None
        real_rmtree = shutil.rmtree

        def torn_rmtree(path, *args, **kwargs):  # dies after removing part of the folder
            for child in sorted(Path(path).iterdir())[:2]:
                child.unlink()

        self._wrap(monkeypatch, os, "replace", os.replace)
        self._wrap(monkeypatch, shutil, "rmtree", real_rmtree, torn=torn_rmtree)
        self._wrap(monkeypatch, safetensors.torch, "save_file", safetensors.torch.save_file)
        for name in ("write_bytes_synced", "write_metrics", "fsync_folder_files"):
            self._wrap(monkeypatch, checkpoint_module, name, getattr(checkpoint_module, name))

    def _wrap(self, monkeypatch, owner, name, real, torn=None):
        def step(*args, **kwargs):
            self.count += 1
            if self.count == self.fail_at:
                self.failed = f"{name}{tuple(str(a) for a in args[:1])}"
                if self.kind == "crash":
                    if torn is not None and Path(args[0]).is_dir():
                        torn(*args, **kwargs)
                    raise ProcessDied(self.failed)
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, step)


def steps_of_a_replacing_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    run = tmp_path / "count"
    save(checkpoint_dir(run, STEP), seed=1)
    with monkeypatch.context() as patch:
        faults = StepFaults(patch, fail_at=0, kind="crash")
        save(checkpoint_dir(run, STEP), seed=2)
    return faults.count


@pytest.mark.parametrize("kind", ["crash", "oserror"])
def test_a_fault_at_any_step_of_replacing_a_checkpoint_leaves_the_old_or_the_new_one(tmp_path, monkeypatch, kind):
    reference = tmp_path / "reference"
    save(reference / "old", seed=1)
    save(reference / "new", seed=2)
    old, new = digest(reference / "old"), digest(reference / "new")
    assert old != new and set(old) == {"config.json", "velocity.safetensors", "value.safetensors",
                                       "train_state.safetensors", "metrics.json"}
    steps = steps_of_a_replacing_write(tmp_path, monkeypatch)
    assert steps >= 8  # 4 files, their fsync, metrics.json's own rename, the 2 renames, the removal of .old
    seen, between_renames = set(), 0
    for fail_at in range(1, steps + 2):  # steps + 1: nothing fails
        run = tmp_path / f"run-{fail_at}"
        folder = checkpoint_dir(run, STEP)
        save(folder, seed=1)
        with monkeypatch.context() as patch:
            faults = StepFaults(patch, fail_at, kind)
            try:
                save(folder, seed=2)
            except (ProcessDied, CheckpointError):
                assert faults.failed is not None
        between_renames += not folder.exists()

        remove_unfinished_writes(run)  # what a run does first when it starts again

        assert list_checkpoints(run) == [folder], (fail_at, faults.failed)
        assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name], (fail_at, faults.failed)
        content = digest(folder)
        assert content in (old, new), (fail_at, faults.failed, kind)
        agent, meta = load_agent(folder)
        load_train_state_into(agent, folder, {"sample": torch.Generator()})
        assert meta.step == agent.step == (1 if content == old else 2)
        seen.add("old" if content == old else "new")
    assert seen == {"old", "new"}
    if kind == "crash":
        assert between_renames >= 1  # the step that matters was hit: the folder was gone when the process died


def test_a_resume_after_a_crash_between_the_renames_continues_from_the_replaced_checkpoint(
    tiny_run_dir, tiny_dataset_dir, tmp_path
):
    from rql_cli.cli.app import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    folder = checkpoint_dir(run, 2)
    os.replace(folder, folder.with_name(f".{folder.name}.old"))  # died after the first rename ...
    torn = folder.with_name(f".{folder.name}.tmp")
    torn.mkdir()
    (torn / "velocity.safetensors").write_bytes(b"half")  # ... with the new one half written

    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--steps", "3", "--set", "compile=off"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000003"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    history = json.loads((run / "train_config.json").read_text())["history"]
    assert (history[-1]["event"], history[-1]["step"]) == ("resume", 2)
