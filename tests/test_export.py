"""`rql export`: the exported file, run in onnxruntime or loaded with torch.export.load, acts as the
checkpoint does; `rql eval` runs it in its env; bad input gets one message and leaves nothing behind.

Tolerance: actions (in [-1, 1]) of an ONNX file may differ from eager torch by at most
``rql_cli.export.policy.TOLERANCE`` (1e-4; about 1e-6 measured); a pt2 archive runs torch's own kernels and
must agree to 1e-6 (0 measured). Each exported file below is made once per module by the real
command and opened here with the runtimes directly, not through rql's own runner.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import assert_refused, invoke

from rql_cli.export.policy import TOLERANCE

pytest.importorskip("onnxruntime", reason="the export tests need the [export] extra (in the test extra)")

BUNDLED = "cube-single-task1-rql-cpu"


def bundled_step() -> int:
    """The step of the bundled agent the exports are made from (as its config.json records it)."""
    from rql_cli.io.bundled import bundled_checkpoint_folders
    from rql_cli.io.checkpoint_meta import read_meta

    return read_meta(bundled_checkpoint_folders()[BUNDLED])[0].step


DICT_ENV_ID = "ExportDict-v0"
DICT_DATASET = "minari:test/exportdict/random-v0"
DICT_LOW, DICT_HIGH = [-2.0, 0.0], [2.0, 5.0]
PT2_TOLERANCE = 1e-6
DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"


# ------------------------------------------------------------------------------------------
# Agents: the bundled one (h 5), a trained tiny run (h 5), and a Minari-style one made here (h 1, a
# dict-observation env with action bounds other than [-1, 1]); ONNX exports are the slow part of this
# module (seconds each), so h 1 and h 5, OGBench and dict, ONNX and pt2 are covered by four exports.
# ------------------------------------------------------------------------------------------


def _dict_env_class():
    import gymnasium
    from gymnasium import spaces

    class ExportDictEnv(gymnasium.Env):
        """Keys declared out of sorted order (velocity, angle, position); actions in [-2, 2] x [0, 5]."""

        def __init__(self):
            box = lambda n: spaces.Box(-10.0, 10.0, (n,), np.float32)  # noqa: E731
            self.observation_space = spaces.Dict(
                {"velocity": box(2), "angle": box(1), "position": box(3)}, sort_keys=False
            )
            self.action_space = spaces.Box(np.array(DICT_LOW, np.float32), np.array(DICT_HIGH, np.float32))

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return self.observation_space.sample(), {}

        def step(self, action):
            return self.observation_space.sample(), 0.0, False, False, {}

    return ExportDictEnv


ExportDictEnv = _dict_env_class()


def _random_checkpoint(folder: Path, *, env_id: str, obs_dim: int, action_dim: int, horizon: int,
                       env_spec: str | None = None) -> Path:
    """A checkpoint of a freshly initialised agent whose online velocity field differs from its EMA
    one, so acting with the wrong field shows."""
    from rql_cli.config import RQLConfig
    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint import save_checkpoint
    from rql_cli.io.checkpoint_meta import CheckpointMeta

    config = RQLConfig(actor_hidden_dims=[16, 16], value_hidden_dims=[8], ensemble_size=2, flow_steps=3,
                       horizon=horizon)
    torch.manual_seed(0)
    agent = RQLAgent(config, obs_dim, action_dim, torch.device("cpu"))
    with torch.no_grad():
        for parameter in agent.velocity.parameters():
            parameter.add_(0.5 * torch.randn_like(parameter))
    meta = CheckpointMeta(config=config, dataset=env_id, env_id=env_id, obs_dim=obs_dim, action_dim=action_dim,
                          step=0, env_spec=env_spec)
    return save_checkpoint(folder, agent, meta)


@pytest.fixture(scope="module")
def dict_env():
    import gymnasium

    gymnasium.register(DICT_ENV_ID, entry_point=f"{__name__}:ExportDictEnv", max_episode_steps=5)
    yield gymnasium.spec(DICT_ENV_ID).to_json()
    gymnasium.registry.pop(DICT_ENV_ID, None)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tiny_run_dir, dict_env) -> dict[str, str]:
    """REF of each agent: 'bundled' (OGBench, h 5), 'run' (a run folder, OGBench, h 5), 'dict' (h 1)."""
    root = tmp_path_factory.mktemp("export-checkpoints")
    dict_agent = _random_checkpoint(root / "dict", env_id=DICT_DATASET, obs_dim=6, action_dim=2, horizon=1,
                                    env_spec=dict_env)
    return {"bundled": BUNDLED, "run": str(tiny_run_dir), "dict": str(dict_agent)}


EXPORTS = [("bundled", "onnx"), ("dict", "onnx"), ("run", "pt2"), ("dict", "pt2")]


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Every (agent, format) of EXPORTS exported once by `rql export` (which validates it too)."""
    root = tmp_path_factory.mktemp("exported")
    files = {}
    for name, export_format in EXPORTS:
        out = root / name / f"policy.{export_format}"
        result = invoke("export", "--checkpoint", checkpoints[name], "--out", str(out))
        assert result.exit_code == 0, result.output
        assert re.search(r"max \|exported - checkpoint\| = \S+ at batches 1 and 64", result.output), result.output
        files[name, export_format] = out
    return files


def _load_agent(ref: str):
    from rql_cli.io.resolve import load_checkpoint

    return load_checkpoint(ref, "cpu").agent


def _run_file(path: Path, observation: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The exported file run by its own runtime, as a user would."""
    if path.suffix == ".onnx":
        import onnxruntime  # type: ignore[import-untyped]

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["action_chunk"], {"observation": observation, "noise": noise})[0]
    module = torch.export.load(str(path)).module()
    with torch.no_grad():
        return module(torch.from_numpy(observation), torch.from_numpy(noise)).numpy()


# ------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "export_format"), EXPORTS)
def test_the_exported_file_acts_as_the_checkpoint_for_the_same_noise_at_batch_1_and_7(
    exported, checkpoints, name, export_format
):
    agent = _load_agent(checkpoints[name])
    tolerance = TOLERANCE if export_format == "onnx" else PT2_TOLERANCE
    for batch in (1, 7):
        observation = torch.randn(batch, agent.obs_dim, generator=torch.Generator().manual_seed(batch))
        expected = agent.act(observation, torch.Generator().manual_seed(100 + batch))
        # The noise act drew: one standard-normal (B, h*A) draw from the generator it was given.
        noise = torch.randn(batch, agent.chunk_dim, generator=torch.Generator().manual_seed(100 + batch))
        got = _run_file(exported[name, export_format], observation.numpy(), noise.numpy())
        assert got.shape == (batch, agent.config.horizon, agent.action_dim) == tuple(expected.shape)
        assert np.abs(got - expected.numpy()).max() <= tolerance
        online = agent.act(observation, torch.Generator().manual_seed(100 + batch), use_ema=False)
        assert np.abs(got - online.numpy()).max() > 10 * tolerance  # the EMA field acts, not the online one


def test_the_onnx_graph_takes_any_batch_and_names_its_inputs(exported):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported["bundled", "onnx"]), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape, i.type) for i in session.get_inputs()] == [
        ("observation", ["batch", 28], "tensor(float)"), ("noise", ["batch", 25], "tensor(float)")]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("action_chunk", ["batch", 5, 5])]
    chunk = session.run(None, {"observation": np.full((33, 28), 50, np.float32),
                               "noise": np.full((33, 25), 9, np.float32)})[0]
    assert chunk.shape == (33, 5, 5) and chunk.min() >= -1 and chunk.max() <= 1  # clipped, as act clips


def test_the_sidecar_records_dims_layout_bounds_source_and_the_validation_figure(exported, checkpoints):
    info = json.loads((exported["dict", "onnx"].parent / "policy.onnx.json").read_text())
    assert (info["obs_dim"], info["action_dim"], info["horizon"], info["flow_steps"]) == (6, 2, 1, 3)
    assert info["inputs"]["noise"]["shape"] == ["batch", 2]
    assert info["outputs"]["action_chunk"]["shape"] == ["batch", 1, 2]
    # Flattened as the env adapter flattens a Minari dataset's Dict: sorted keys.
    assert [(p["key"], p["shape"], p["start"], p["stop"]) for p in info["observation_layout"]] == [
        ("angle", [1], 0, 1), ("position", [3], 1, 4), ("velocity", [2], 4, 6)]
    assert (info["action_bounds"]["low"], info["action_bounds"]["high"]) == (DICT_LOW, DICT_HIGH)
    assert info["source"]["ref"] == checkpoints["dict"] and info["source"]["checkpoint"]["env_id"] == DICT_DATASET
    assert 0 <= info["validation"]["max_abs_diff"] <= info["validation"]["tolerance"] == TOLERANCE
    assert info["versions"]["rql"] and info["versions"]["onnx"]
    assert info["validation"]["runtime"].startswith("onnxruntime")

    ogbench = json.loads((exported["bundled", "onnx"].parent / "policy.onnx.json").read_text())
    assert ogbench["observation_layout"] == [{"key": None, "shape": [28], "start": 0, "stop": 28}]
    assert ogbench["action_bounds"]["low"] == [-1.0] * 5 and ogbench["action_bounds"]["high"] == [1.0] * 5
    assert ogbench["source"]["kind"] == "bundled" and ogbench["source"]["checkpoint"]["step"] == bundled_step()


def test_the_docs_example_runs_the_onnx_file_with_numpy_and_onnxruntime_alone(exported, tmp_path):
    """docs/export.md's example, run as written next to an exported file, imports neither rql nor torch."""
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.S)
    assert code is not None
    for name in ("policy.onnx", "policy.onnx.json"):
        shutil.copy(exported["dict", "onnx"].parent / name, tmp_path / name)
    check = "\nimport sys; print(sorted(m for m in ('torch', 'rql_cli') if m in sys.modules))\n"
    result = subprocess.run([sys.executable, "-c", code.group(1) + check], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "[]", result.stdout
    chunk = np.array(json.loads(lines[-2]))
    assert chunk.shape == (1, 2)  # (h, A) in the env's own units
    assert np.all(chunk >= DICT_LOW) and np.all(chunk <= DICT_HIGH)


# ------------------------------------------------------------------------------------------
# rql eval of an exported file
# ------------------------------------------------------------------------------------------


def test_eval_of_the_bundled_agents_onnx_file_matches_the_checkpoint_episode_by_episode(exported, tmp_path):
    reports = {}
    for name, ref in (("checkpoint", BUNDLED), ("onnx", str(exported["bundled", "onnx"]))):
        result = invoke("eval", "--checkpoint", ref, "--episodes", "3", "--envs", "1", "--seed", "4", "--device", "cpu",
                        "--json", str(tmp_path / f"{name}.json"), "--quiet")
        assert result.exit_code == 0, result.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    checkpoint, onnx = (reports[k]["tasks"][0] for k in ("checkpoint", "onnx"))
    assert onnx["seeds"] == checkpoint["seeds"] == [4, 5, 6]
    assert onnx["successes"] == checkpoint["successes"]
    assert onnx["env_id"] == checkpoint["env_id"] and reports["onnx"]["step"] == bundled_step()
    assert reports["onnx"]["device"] == "onnxruntime CPU"


def test_eval_of_a_pt2_archive_runs_in_its_env(exported, tmp_path):
    result = invoke("eval", "--checkpoint", str(exported["dict", "pt2"]), "--episodes", "2", "--envs", "1",
                    "--json", str(tmp_path / "r.json"), "--quiet")
    assert result.exit_code == 0, result.output
    task = json.loads((tmp_path / "r.json").read_text())["tasks"][0]
    assert task["episodes"] == 2 and task["lengths"] == [5, 5]


def test_eval_refuses_an_exported_file_without_its_sidecar_or_changed_since_and_keeps_the_sidecar(exported, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(exported["dict", "onnx"], lone)
    assert_refused(invoke("eval", "--checkpoint", str(lone), "--episodes", "1"), "has no lone.onnx.json beside it")

    changed = tmp_path / "changed.onnx"
    changed.write_bytes(exported["dict", "onnx"].read_bytes() + b"\0")
    shutil.copy(exported["dict", "onnx"].parent / "policy.onnx.json", tmp_path / "changed.onnx.json")
    assert_refused(invoke("eval", "--checkpoint", str(changed), "--episodes", "1"), "its sha256 differs")

    assert_refused(invoke("eval", "--checkpoint", str(tmp_path / "missing.pt2")), "no such file")
    assert_refused(invoke("eval", "--checkpoint", str(exported["dict", "onnx"]), "--save"),
                   "is an exported policy, not a checkpoint")
    sidecar = exported["dict", "onnx"].parent / "policy.onnx.json"
    before = sidecar.read_bytes()
    assert_refused(invoke("eval", "--checkpoint", str(exported["dict", "onnx"]), "--json", str(sidecar)),
                   "would overwrite what rql export wrote beside policy.onnx")
    assert sidecar.read_bytes() == before


# ------------------------------------------------------------------------------------------
# Bad input: one message each, nothing left behind
# ------------------------------------------------------------------------------------------


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "tflite", "--out", "policy.tflite"], "Unknown export format 'tflite'. Formats: onnx, pt2."),
    (["--out", "policy.bin"], "names no format: end it in .onnx or .pt2"),
    (["--format", "onnx", "--out", "policy.pt2"], "Name it policy.onnx"),
    (["--out", "notes.txt/policy.onnx"], "notes.txt is a file, not a folder"),
])
def test_bad_formats_and_unwritable_outputs_are_refused_before_loading(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    assert_refused(invoke("export", "--checkpoint", "no-such-checkpoint", *args), message)
    assert listing(tmp_path) == ["notes.txt"]


def test_a_checkpoint_with_too_many_flow_steps_to_unroll_is_refused(checkpoints, tmp_path):
    source = Path(checkpoints["dict"])
    folder = tmp_path / "long-flow"
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["flow_steps"] = 101
    (folder / "config.json").write_text(json.dumps(config))
    assert_refused(invoke("export", "--checkpoint", str(folder), "--out", str(tmp_path / "out" / "p.onnx")),
                   "takes 101 Euler steps per action", "writes at most 100")
    assert listing(tmp_path) == ["long-flow", *(f"long-flow/{name}" for name in listing(folder))]


def test_missing_onnx_packages_are_named_with_the_install_command(checkpoints, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert_refused(invoke("export", "--checkpoint", checkpoints["dict"], "--out", str(tmp_path / "p.onnx")),
                   "missing: onnxruntime",
                   "pip install onnx onnxscript onnxruntime (rql-cli's extra 'export')")
    assert listing(tmp_path) == []


def test_a_file_that_fails_validation_is_not_kept_and_an_older_one_survives(checkpoints, tmp_path, monkeypatch):
    import rql_cli.export.writer

    out = tmp_path / "deploy" / "policy.pt2"
    out.parent.mkdir()
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(rql_cli.export.writer, "validation_difference", lambda *args, **kwargs: 0.25)
    assert_refused(invoke("export", "--checkpoint", checkpoints["dict"], "--out", str(out)),
                   "differs from the checkpoint's own by up to 0.25", "tolerance 0.0001; it was not kept")
    assert listing(tmp_path) == ["deploy", "deploy/policy.pt2"] and out.read_bytes() == b"the previous export"

    fresh = tmp_path / "new" / "folders" / "policy.pt2"
    assert_refused(invoke("export", "--checkpoint", checkpoints["dict"], "--out", str(fresh)), "it was not kept")
    assert not (tmp_path / "new").exists()
