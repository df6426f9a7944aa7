"""Checkpoint folders: round trip, errors that name the file, newer formats, migration of format 1."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from rql_cli.config import RQLConfig, RunConfig
from rql_cli.errors import CheckpointError, RQLError
from rql_cli.io.checkpoint import load_agent, save_checkpoint
from rql_cli.io.checkpoint_meta import FORMAT_VERSION, CheckpointMeta, check_checkpoint_dims, read_meta

TINY = dict(
    actor_hidden_dims=[32, 32], value_hidden_dims=[32, 32], ensemble_size=3, flow_steps=4,
    horizon=3, batch_size=16, eval_episodes=0, log_interval=2, device="cpu",
)
FORMAT1_RUN = Path(__file__).parent / "data" / "format1-run"
FORMAT2_RUN = Path(__file__).parent / "data" / "format2-run"


def make_meta(config: RQLConfig, step: int = 7) -> CheckpointMeta:
    return CheckpointMeta(
        config=config, dataset="cube-single-play-v0", env_id="cube-single-play-singletask-v0",
        obs_dim=28, action_dim=5, step=step,
    )


def test_checkpoint_round_trip_restores_every_tensor(tmp_path):
    from rql_cli.core.rql import RQLAgent

    torch.manual_seed(0)
    config = RunConfig.of(**TINY).agent
    agent = RQLAgent(config, 28, 5, torch.device("cpu"))
    with torch.no_grad():
        for p in agent.value_target.parameters():
            p.add_(1.0)  # targets differ from online nets and must come back as saved
    folder = save_checkpoint(tmp_path / "ckpt", agent, make_meta(config))
    loaded, meta = load_agent(folder)
    assert meta.step == 7 and meta.config == config
    for name in ("velocity", "velocity_target", "value", "value_target"):
        for (key, a), b in zip(getattr(agent, name).state_dict().items(), getattr(loaded, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key}"
    assert not (folder / "train_state.safetensors").exists()  # only with generators
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary leftovers


def test_a_slim_checkpoint_is_half_the_bytes_and_loads_its_stand_ins(tmp_path):
    """Bundled agents keep the acting EMA field and the value ensemble; a load starts the raw field at the
    EMA field and the Polyak target at the ensemble, and acts exactly as the full checkpoint does."""
    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint import load_tensors

    torch.manual_seed(0)
    config = RunConfig.of(**TINY).agent
    agent = RQLAgent(config, 28, 5, torch.device("cpu"))
    with torch.no_grad():  # all four networks differ, so a stand-in mixed up would show
        for offset, name in enumerate(("velocity", "velocity_target", "value", "value_target")):
            for p in getattr(agent, name).parameters():
                p.add_(0.1 * (offset + 1))
    full = save_checkpoint(tmp_path / "full", agent, make_meta(config))
    slim = save_checkpoint(tmp_path / "slim", agent, make_meta(config), slim=True)
    for file_name in ("velocity.safetensors", "value.safetensors"):
        assert (slim / file_name).stat().st_size < 0.55 * (full / file_name).stat().st_size
    assert {k.split(".")[0] for k in load_tensors(slim / "velocity.safetensors")} == {"velocity_target"}
    assert {k.split(".")[0] for k in load_tensors(slim / "value.safetensors")} == {"value"}

    loaded, _ = load_agent(slim)
    for name, source in (("velocity", "velocity_target"), ("velocity_target", "velocity_target"),
                         ("value", "value"), ("value_target", "value")):
        for (key, a), b in zip(getattr(agent, source).state_dict().items(), getattr(loaded, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} should be the saved {source}"
    observations = torch.randn(4, 28)
    acted = [a.act(observations, torch.Generator().manual_seed(3)) for a in (load_agent(full)[0], loaded)]
    assert torch.equal(acted[0], acted[1])


def saved_tiny_checkpoint(tmp_path: Path) -> Path:
    """A freshly initialised TINY agent saved as tmp_path/ckpt."""
    from rql_cli.core.rql import RQLAgent

    config = RunConfig.of(**TINY).agent
    return save_checkpoint(tmp_path / "ckpt", RQLAgent(config, 28, 5, torch.device("cpu")), make_meta(config))


def test_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    data = (folder / "value.safetensors").read_bytes()
    (folder / "value.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="value.safetensors.*truncated or corrupt"):
        load_agent(folder)
    (folder / "value.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing value.safetensors"):
        load_agent(folder)


def test_checkpoint_from_a_newer_format_is_refused_and_unknown_fields_warn(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    payload = json.loads((folder / "config.json").read_text())
    payload["config"]["from_the_future"] = 1
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.warns(UserWarning, match="from_the_future"):
        read_meta(folder)
    payload["format_version"] = 99
    payload["versions"]["rql"] = "9.0.0"
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="format_version 99, written by rql 9.0.0"):
        read_meta(folder)


def test_checkpoint_with_other_network_dims_names_both_shapes(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    payload = json.loads((folder / "config.json").read_text())
    payload["obs_dim"] = 37
    (folder / "config.json").write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"shape \(.*\) but config.json describes"):
        load_agent(folder)


def test_the_dims_check_names_both_sizes_and_which_is_which():
    meta = make_meta(RQLConfig())
    check_checkpoint_dims("ck", meta, 28, 5, "the environment")
    with pytest.raises(CheckpointError) as caught:
        check_checkpoint_dims("runs/a", meta, 37, 5, "the environment", "cube-double-play-singletask-v0")
    assert str(caught.value) == (
        "The checkpoint runs/a does not fit cube-double-play-singletask-v0: the checkpoint expects "
        "observations of size 28 and actions of size 5; the environment gives observations of size 37 "
        "and actions of size 5."
    )
    with pytest.raises(CheckpointError, match="does not fit the run's data: .* gives observations of size 29"):
        check_checkpoint_dims("runs/a", meta, 29, 5, "the run's data")


# --------------------------------------------------------------------------------------------
# Format 1 (the bundled checkpoint's format, and run folders of rql 0.1) still loads
# --------------------------------------------------------------------------------------------


def test_format1_checkpoint_loads_and_its_training_metrics_migrate(tmp_path):
    from rql_cli.io.metrics import read_metrics
    from rql_cli.results import EvalResult

    run = shutil.copytree(FORMAT1_RUN, tmp_path / "run")
    checkpoint = run / "checkpoints" / "step_00000003"
    on_disk = json.loads((checkpoint / "config.json").read_text())
    assert on_disk["format_version"] == 1 < FORMAT_VERSION
    agent, meta = load_agent(checkpoint)
    assert (meta.step, meta.obs_dim, meta.action_dim, meta.config.actor_hidden_dims) == (3, 28, 5, [16, 16])
    assert meta.task_name.resolve_task() == 2
    report = read_metrics(checkpoint)  # format 1 training wrote one result dict
    written = json.loads((checkpoint / "metrics.json").read_text())
    assert report.tasks == [EvalResult.from_dict(written)] and report.mean_success_rate == written["success_rate"]
    assert json.loads((checkpoint / "config.json").read_text()) == on_disk  # reading never rewrites


def test_format1_run_folder_resolves_and_resumes(tiny_dataset_dir, tmp_path):
    from rql_cli.io.resolve import resolve_reference
    from rql_cli.io.run_layout import RUN_FILE
    from rql_cli.io.run_record import read_run_record
    from rql_cli.training.offline import DataSpec, train

    run = shutil.copytree(FORMAT1_RUN, tmp_path / "run")
    resolved = resolve_reference(str(run))
    assert resolved.source == "run" and resolved.folder == run / "checkpoints" / "step_00000003"
    record = read_run_record(run)  # from the format 1 config.json of the run folder
    assert record.dataset == "cube-single-play-v0" and record.config.agent.ensemble_size == 2
    data = DataSpec(name=record.dataset, dataset_dir=str(tiny_dataset_dir))
    outcome = train(record.config.replace(steps=5, eval_episodes=0), data, run, resume=True)
    assert outcome.step == 5
    resumed = json.loads((run / RUN_FILE).read_text())
    assert resumed["format_version"] == 3
    runtime = resumed["history"][0].pop("runtime")  # what this resume ran with: threads, compile
    assert runtime["compile"]["mode"] is None and runtime["threads"]["threads"] >= 1
    assert resumed["history"] == [{"step": 3, "event": "resume", "changes": {
        "steps": [3, 5], "eval_episodes": [2, 0]}}]


def test_format2_run_folder_loads_resolves_and_resumes_into_format3(tiny_dataset_dir, tmp_path):
    """A run of the format before the agent config was split from the run's: its checkpoint's config
    holds run fields too (dropped on reading, the seed kept); resuming writes format 3 beside it."""
    from rql_cli.io.resolve import resolve_reference
    from rql_cli.io.run_layout import RUN_FILE
    from rql_cli.io.run_record import read_run_record
    from rql_cli.data.sources import fingerprint
    from rql_cli.training.offline import DataSpec, train

    run = shutil.copytree(FORMAT2_RUN, tmp_path / "run")
    old = run / "checkpoints" / "step_00000003"
    on_disk = json.loads((old / "config.json").read_text())
    assert on_disk["format_version"] == 2 and on_disk["config"]["device"] == "cpu"
    agent, meta = load_agent(old)
    assert (meta.step, meta.seed, meta.config.actor_hidden_dims, meta.config.flow_steps) == (3, 5, [16, 16], 3)
    assert resolve_reference(str(run)).folder == old
    record = read_run_record(run)
    assert (record.config.seed, record.config.steps, record.config.agent.horizon) == (5, 3, 3)
    # The generator is deterministic for one simulator version only (mujoco 4.0.0 made the committed run's
    # file, 4.0.1 makes other bytes): the record's fingerprint is pointed at the file made here, so the resume
    # checks a fingerprint as it would on the run's own machine.
    training_file = Path(tiny_dataset_dir) / f"{record.dataset}.npz"
    data = DataSpec(name=record.dataset, **{**record.data, "dataset_dir": str(tiny_dataset_dir),
                                            "fingerprint": fingerprint(training_file)})
    outcome = train(record.config.replace(steps=5), data, run, resume=True)
    assert outcome.step == 5
    resumed = json.loads((run / RUN_FILE).read_text())
    assert resumed["format_version"] == 3 and resumed["config"]["agent"]["horizon"] == 3
    assert [(h["event"], h["step"], h.get("changes")) for h in resumed["history"]] == [
        ("start", 0, None), ("resume", 3, {"steps": [3, 5]})]
    written = json.loads((outcome.last_checkpoint / "config.json").read_text())
    assert written["format_version"] == 3 and written["seed"] == 5
    assert set(written["config"]) == set(meta.config.to_dict())  # the agent's fields alone
    assert json.loads((old / "config.json").read_text()) == on_disk  # the old checkpoint is left as it was


def test_a_bundled_format1_checkpoint_loads_by_name(tmp_path, monkeypatch):
    import shutil

    from rql_cli.io.resolve import load_checkpoint

    # A format-1 checkpoint folder (rql 0.1) shipped as a bundled agent, weights only.
    source = Path(__file__).parent / "data" / "format1-run" / "checkpoints" / "step_00000003"
    shutil.copytree(source, tmp_path / "old-agent", ignore=shutil.ignore_patterns("train_state.safetensors"))
    monkeypatch.setenv("RQL_CHECKPOINTS", str(tmp_path))
    loaded = load_checkpoint("old-agent", "cpu")
    assert loaded.resolved.source == "bundled"
    assert loaded.meta.dataset == "cube-single-play-v0" and loaded.agent.step == loaded.meta.step > 0


def test_config_json_of_the_wrong_shape_is_a_clean_error(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    path = folder / "config.json"
    payload = json.loads(path.read_text())
    for broken, fragment in [
        ([1, 2], "must hold a JSON object"),
        ({**payload, "obs_dim": "28"}, "'obs_dim' must be an integer"),
        ({**payload, "config": [1]}, "JSON object of fields"),
        ({**payload, "config": {**payload["config"], "horizon": "3"}}, "'horizon' expects an integer"),
    ]:
        path.write_text(json.dumps(broken))
        with pytest.raises(CheckpointError, match=fragment):
            read_meta(folder)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="mounting a small tmpfs needs root; this disk-full test runs where it can")
def test_a_full_disk_during_a_write_keeps_the_previous_checkpoint_and_leaves_no_temp_folder(tmp_path):
    import subprocess

    from rql_cli.core.rql import RQLAgent

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=150k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        config = RunConfig.of(**TINY).agent
        agent = RQLAgent(config, 28, 5, torch.device("cpu"))
        generators = {"sample": torch.Generator(), "noise": torch.Generator()}
        first = save_checkpoint(disk / "run" / "step_1", agent, make_meta(config), generators=generators)
        before = {p.name: p.read_bytes() for p in first.iterdir()}
        with pytest.raises(CheckpointError, match="No space left on device.*intact"):
            save_checkpoint(disk / "run" / "step_2", agent, make_meta(config), generators=generators)
        assert sorted(p.name for p in (disk / "run").iterdir()) == ["step_1"]
        assert {p.name: p.read_bytes() for p in first.iterdir()} == before
        load_agent(first)
    finally:
        subprocess.run(["umount", str(disk)])


def test_weights_of_the_wrong_dtype_or_not_finite_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = saved_tiny_checkpoint(tmp_path)
    path = folder / "velocity.safetensors"
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    save_file({**tensors, name: tensors[name].to(torch.int8)}, str(path))
    with pytest.raises(CheckpointError, match="is int8, but rql stores float32 weights"):
        load_agent(folder)
    save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, str(path))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_agent(folder)


def test_a_config_json_that_asks_for_the_impossible_is_refused_before_allocating(tmp_path):
    folder = saved_tiny_checkpoint(tmp_path)
    path = folder / "config.json"
    payload = json.loads(path.read_text())
    payload["config"].update(ensemble_size=1024, value_hidden_dims=[65536] * 8)
    path.write_text(json.dumps(payload))
    with pytest.raises(RQLError, match=r"parameters .* would need [\d,.]+ GiB"):
        load_agent(folder)
    payload["config"]["flow_steps"] = 10**9
    path.write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"flow_steps must lie in \[1, 1,000\]"):
        load_agent(folder)


def test_a_train_state_missing_a_key_is_a_clean_error(tmp_path):
    from safetensors.torch import load_file, save_file

    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint import load_train_state_into

    config = RunConfig.of(**TINY).agent
    agent = RQLAgent(config, 28, 5, torch.device("cpu"))
    generators = {"sample": torch.Generator(), "noise": torch.Generator()}
    folder = save_checkpoint(tmp_path / "ckpt", agent, make_meta(config), generators=generators)
    state = load_file(str(folder / "train_state.safetensors"))
    del state["rng.noise"]
    save_file(state, str(folder / "train_state.safetensors"))
    with pytest.raises(CheckpointError, match="lacks rng.noise"):
        load_train_state_into(agent, folder, generators)
