"""Datasets from outside OGBench: Minari (made here with minari's own writer) and plain .npz files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rql_cli.cli.app import app
from rql_cli.data.dataset import ChunkSampler
from rql_cli.data.sources import DataSpec
from rql_cli.errors import DatasetError, DatasetNotFoundError

MINARI_ID = "test/pendulum/random-v0"
# (length, terminated): Pendulum never ends by itself; the data says how each episode ended.
EPISODES = [(30, True), (50, False), (20, True), (45, False), (7, False)]
SMALL = ["--set", "actor_hidden_dims=[16]", "--set", "value_hidden_dims=[16]", "--set", "ensemble_size=2",
         "--set", "batch_size=8", "--set", "compile=off", "--device", "cpu"]


def _rollouts(seed: int = 0):
    """Random-action Pendulum episodes: per episode (observations T+1, actions T, rewards T)."""
    import gymnasium

    rng = np.random.default_rng(seed)
    env = gymnasium.make("Pendulum-v1")
    episodes = []
    for index, (length, _) in enumerate(EPISODES):
        observation, _ = env.reset(seed=index)
        observations, actions, rewards = [observation], [], []
        for _ in range(length):
            action = rng.uniform(-2, 2, size=(1,)).astype(np.float32)
            observation, reward, *_ = env.step(action)
            observations.append(observation)
            actions.append(action)
            rewards.append(reward)
        episodes.append((np.array(observations), np.array(actions), np.array(rewards)))
    return env, episodes


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """A Minari dataset of 5 Pendulum episodes of unequal lengths, some terminated, some truncated."""
    import os

    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    root = tmp_path_factory.mktemp("minari")
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    env, episodes = _rollouts()
    buffers = []
    for index, ((observations, actions, rewards), (length, terminated)) in enumerate(zip(episodes, EPISODES)):
        ends = np.zeros(length, bool)
        ends[-1] = True
        buffers.append(EpisodeBuffer(
            id=index, observations=observations, actions=actions, rewards=rewards,
            terminations=ends if terminated else np.zeros(length, bool),
            truncations=np.zeros(length, bool) if terminated else ends,
        ))
    minari.create_dataset_from_buffers(MINARI_ID, buffers, env=env, algorithm_name="random",
                                       ref_min_score=-1500.0, ref_max_score=-150.0)
    yield root, episodes
    if previous is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = previous


def test_minari_arrays_mark_ends_and_terminations_and_rescale_actions(minari_root):
    _, episodes = minari_root
    loaded = DataSpec(name=f"minari:{MINARI_ID}").load(sparse_rewards=False)
    data = loaded.train
    lengths = [length for length, _ in EPISODES]
    assert data.size == sum(lengths) and data.num_episodes == len(EPISODES) and loaded.val is None
    ends = np.cumsum(lengths) - 1
    assert np.flatnonzero(data.terminals.numpy()).tolist() == ends.tolist()  # every end, terminated or not
    terminated_ends = [int(e) for e, (_, terminated) in zip(ends, EPISODES) if terminated]
    assert np.flatnonzero(data.masks.numpy() == 0).tolist() == terminated_ends  # a truncation bootstraps
    observations = np.concatenate([o[:-1] for o, _, _ in episodes])
    next_observations = np.concatenate([o[1:] for o, _, _ in episodes])
    np.testing.assert_allclose(data.observations.numpy(), observations, rtol=1e-6)
    np.testing.assert_allclose(data.next_observations.numpy(), next_observations, rtol=1e-6)
    # Pendulum acts in [-2, 2]; the agent's actions live in [-1, 1].
    actions = np.concatenate([a for _, a, _ in episodes])
    np.testing.assert_allclose(data.actions.numpy(), np.clip(actions / 2.0, -1 + 1e-5, 1 - 1e-5), rtol=1e-6)
    np.testing.assert_allclose(data.rewards.numpy(), np.concatenate([r for _, _, r in episodes]), rtol=1e-6)


def test_windows_stay_in_their_episode_and_starts_are_uniform_over_transitions(minari_root):
    data = DataSpec(name=f"minari:{MINARI_ID}").load(sparse_rewards=False).train
    sampler = ChunkSampler(data, horizon=4)
    episode_of = torch.cumsum(data.terminals, 0) - data.terminals  # episode index per row
    batch = sampler.windows(sampler.start_rows)
    rows = torch.minimum(sampler.start_rows[:, None] + sampler.offsets, sampler.episode_end[sampler.start_rows][:, None])
    assert torch.equal(episode_of[rows], episode_of[sampler.start_rows][:, None].expand_as(rows))
    assert torch.equal(batch.actions, data.actions[rows])
    # Uniform over transitions: an episode gets windows in proportion to its (length - 1) start rows.
    starts = sampler.sample(200_000, torch.Generator().manual_seed(0))
    counts = np.bincount(episode_of[_start_rows(sampler, starts)].long().numpy(), minlength=len(EPISODES))
    expected = np.array([length - 1 for length, _ in EPISODES], float)
    expected *= counts.sum() / expected.sum()
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), (counts, expected)


def _start_rows(sampler: ChunkSampler, batch) -> torch.Tensor:
    """The start row of each sampled window, found from its observation (rows are distinct here)."""
    matches = (batch.observations[:, None, :] == sampler.dataset.observations[None, :, :]).all(-1)
    return matches.float().argmax(1)


def test_train_eval_and_checkpoint_through_the_cli(minari_root, tmp_path, monkeypatch):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--dataset", f"minari:{MINARI_ID}", "--steps", "4", "--eval-every", "4",
                                 "--eval-episodes", "1", *SMALL, "--out", str(run)])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "train_config.json").read_text())
    assert record["env_id"] == f"minari:{MINARI_ID}" and record["obs_dim"] == 3 and record["action_dim"] == 1
    assert record["config"]["agent"]["horizon"] == 1  # the stated preset for Minari sets outside antmaze
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--episodes", "1", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    task = json.loads((tmp_path / "r.json").read_text())["tasks"][0]
    assert task["success_reported"] is False and task["max_episode_steps"] == 200
    expected = 100 * (task["mean_return"] + 1500.0) / 1350.0
    assert task["normalized_score"] == pytest.approx(expected)
    # The checkpoint records the env spec: it evaluates where the dataset is not on disk (a pulled agent).
    meta = json.loads((run / "checkpoints" / "step_00000004" / "config.json").read_text())
    assert json.loads(meta["env_spec"])["id"] == "Pendulum-v1"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "elsewhere"))
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--episodes", "1", "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "s.json").read_text())["tasks"][0]
    assert again["returns"] == task["returns"]  # same env, same seeds, same policy noise
    assert again["normalized_score"] is None  # the reference returns live in the dataset
    from rql_cli.io.checkpoint_meta import read_meta
    from rql_cli.io.model_card import build_model_card

    card = str(build_model_card(read_meta(run / "checkpoints" / "step_00000004")[0], None, "me/pendulum",
                                files=["config.json"]))
    assert "- minari\n- test-pendulum-random-v0\n" in card and "ogbench" not in card.split("---")[1]
    assert "the Minari dataset `test/pendulum/random-v0`" in card
    assert f"rql data download minari:{MINARI_ID}" in card
    # Pendulum reports no success: the rollout table says so and gives the return instead.
    result = runner.invoke(app, ["rollout", "--checkpoint", str(run), "--episodes", "1", "--max-steps", "5"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "│" in line]
    assert "n/a" in rows[0] and " no " not in rows[0] and "n/a" in rows[1] and "(mean)" in rows[1], result.output


def test_a_minari_id_that_is_not_on_disk_gets_one_message_at_once(minari_root, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--dataset", "minari:D4RL/pen/human-v2", "--steps", "1"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "'D4RL/pen/human-v2' is not on disk" in text and str(minari_root[0]) in text
    assert "rql data download minari:D4RL/pen/human-v2" in text
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for command in (["data", "download", "minari:D4RL/pen/human-v2"],
                    ["train", "--dataset", "minari:D4RL/pen/human-v2", "--download", "--steps", "1"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 1 and "HF_HUB_OFFLINE is set" in result.output, result.output


def _plain(path: Path, keys: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Pendulum episodes written as a plain .npz with the required keys plus ``keys``."""
    _, episodes = _rollouts(seed=1)
    arrays = {
        "observations": np.concatenate([o[:-1] for o, _, _ in episodes]),
        "actions": np.concatenate([a for _, a, _ in episodes]),
        "rewards": np.concatenate([r for _, _, r in episodes]),
        "terminals": np.concatenate([np.eye(1, len(r), len(r) - 1, dtype=bool)[0] for _, _, r in episodes]),
    }
    optional = {
        "next_observations": np.concatenate([o[1:] for o, _, _ in episodes]),
        "masks": np.ones(len(arrays["rewards"]), np.float32),
    }
    np.savez(path, **arrays, **{k: optional[k] for k in keys})
    return {**arrays, **optional}


def test_plain_npz_with_and_without_optional_keys(tmp_path):
    full = _plain(tmp_path / "full.npz", ("next_observations", "masks"))
    data = DataSpec(name="gym:Pendulum-v1", dataset_path=str(tmp_path / "full.npz")).load(sparse_rewards=False).train
    assert data.size == len(full["rewards"])
    np.testing.assert_array_equal(data.masks.numpy(), full["masks"])  # given masks win: no termination here
    np.testing.assert_allclose(data.next_observations.numpy(), full["next_observations"])
    np.testing.assert_allclose(data.actions.numpy(), np.clip(full["actions"] / 2, -1 + 1e-5, 1 - 1e-5), rtol=1e-6)

    _plain(tmp_path / "bare.npz")
    bare = DataSpec(name="gym:Pendulum-v1", dataset_path=str(tmp_path / "bare.npz")).load(sparse_rewards=False).train
    # Without next_observations each episode's last row is dropped and the row before it ends the episode.
    assert bare.size == len(full["rewards"]) - len(EPISODES)
    assert bare.num_episodes == len(EPISODES)
    keep = ~full["terminals"]
    np.testing.assert_allclose(bare.observations.numpy(), full["observations"][keep])
    np.testing.assert_allclose(bare.next_observations.numpy(), full["next_observations"][keep])
    assert bare.masks.min() == 1  # the terminal rows were the dropped ones

    del full["rewards"]
    np.savez(tmp_path / "broken.npz", **full)
    with pytest.raises(DatasetError, match="lacks 'rewards'.*rewards \\(N,\\)"):
        DataSpec(name="gym:Pendulum-v1", dataset_path=str(tmp_path / "broken.npz")).load(sparse_rewards=False)
    with pytest.raises(DatasetNotFoundError, match="--dataset-path"):
        DataSpec(name="gym:Pendulum-v1").training_file()


def test_plain_npz_trains_and_evaluates_in_the_env_given_with_env(tmp_path):
    _plain(tmp_path / "data.npz", ("next_observations",))
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "--dataset-path", str(tmp_path / "data.npz"), "--env", "Pendulum-v1",
                                 "--steps", "3", "--eval-every", "3", "--eval-episodes", "1", *SMALL, "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "train_config.json").read_text())["env_id"] == "gym:Pendulum-v1"
    assert "n/a (mean return" in " ".join(result.output.split())  # Pendulum reports no success
    wrong = runner.invoke(app, ["train", "--dataset", "cube-single-play-v0", "--env", "Pendulum-v1", "--steps", "1"])
    assert wrong.exit_code == 1 and "--env names the environment of a plain .npz" in wrong.output


def test_download_goes_through_minaris_remote_on_the_local_hub(minari_root, hub, tmp_path):
    import subprocess
    import sys

    from hub_server import hub_env

    root, _ = minari_root
    namespace = root / "test"
    files = {str(p.relative_to(namespace)): p.read_bytes() for p in namespace.rglob("*") if p.is_file()}
    # What the real remote holds at the top of a namespace repo: its datasets and sub-namespaces.
    files["namespace_metadata.json"] = json.dumps({"datasets": [MINARI_ID], "namespaces": ["test/pendulum"]}).encode()
    hub.state.add_repo("farama-minari/test", files, dataset=True)
    env = {**hub_env(hub, tmp_path / "home"), "MINARI_DATASETS_PATH": str(tmp_path / "datasets")}

    def rql(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rql_cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    done = rql("data", "download", f"minari:{MINARI_ID}")
    assert done.returncode == 0, done.stdout + done.stderr
    stored = tmp_path / "datasets" / MINARI_ID / "data" / "main_data.hdf5"
    assert stored.read_bytes() == (root / MINARI_ID / "data" / "main_data.hdf5").read_bytes()
    assert any("/datasets/farama-minari/test/resolve/" in path for _, path in hub.state.requests)
    again = rql("data", "download", f"minari:{MINARI_ID}")
    assert again.returncode == 0 and "already at" in again.stdout
    missing = rql("data", "download", "minari:test/pendulum/expert-v0")
    assert missing.returncode == 1 and "test/pendulum/expert-v0" in missing.stdout + missing.stderr
