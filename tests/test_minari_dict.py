"""A Minari dataset of an env with a Dict observation space and action bounds other than [-1, 1].

The env declares its observation keys out of sorted order; minari reads a dataset's Dict space back
with its keys sorted, so the data is flattened in sorted-key order, and the env adapter must flatten
the env's observations in that same order. Actions are mapped to [-1, 1] in the data and back to the
env's bounds by the env adapter. The env's reward depends only on the seed it was reset with, so the
D4RL-normalised score of an evaluation and its interval can be computed here by hand.
"""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
from typer.testing import CliRunner

ENV_ID = "RecordingDict-v0"
DATASET_ID = "test/recordingdict/random-v0"
LOW, HIGH = np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32)
EPISODE_STEPS = 5
REF_MIN, REF_MAX = -5.0, 15.0
SORTED_KEYS = ("angle", "position", "velocity")
RECEIVED: list[np.ndarray] = []  # every action the env was stepped with, in its own units


def _env_class():
    import gymnasium
    from gymnasium import spaces

    class RecordingDictEnv(gymnasium.Env):
        """Keys declared velocity, angle, position (not sorted); reward = reset seed % 4 every step."""

        def __init__(self):
            box = lambda n: spaces.Box(-1e6, 1e6, (n,), np.float32)
            self.observation_space = spaces.Dict({"velocity": box(2), "angle": box(1), "position": box(3)},
                                                 sort_keys=False)
            self.action_space = spaces.Box(LOW, HIGH, dtype=np.float32)
            self.t, self.offset, self.reward = 0, 0.0, 0.0

        def _observation(self):
            t = self.offset + self.t  # every key's values are distinct, so their order shows
            return {"velocity": np.array([10 + t, 20 + t], np.float32), "angle": np.array([30 + t], np.float32),
                    "position": np.array([40 + t, 50 + t, 60 + t], np.float32)}

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.t, self.offset, self.reward = 0, 1000.0 * (seed or 0), float((seed or 0) % 4)
            return self._observation(), {}

        def step(self, action):
            RECEIVED.append(np.array(action, np.float32))
            self.t += 1
            return self._observation(), self.reward, False, False, {}

    return RecordingDictEnv


RecordingDictEnv = _env_class()


def flat(observation: dict) -> np.ndarray:
    """A dict observation flattened in sorted-key order."""
    return np.concatenate([np.asarray(observation[key], np.float32).ravel() for key in SORTED_KEYS])


@pytest.fixture(scope="module")
def dict_dataset(tmp_path_factory):
    """Four episodes written with minari's own writer; yields their (dict observations, env actions)."""
    import os

    import gymnasium
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    gymnasium.register(ENV_ID, entry_point=f"{__name__}:RecordingDictEnv", max_episode_steps=EPISODE_STEPS)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path_factory.mktemp("minari"))
    env = gymnasium.make(ENV_ID)
    rng = np.random.default_rng(0)
    buffers, episodes = [], []
    for index in range(4):
        observation, _ = env.reset(seed=index)
        observations, actions = [observation], [LOW, HIGH]  # both bounds appear in the data
        actions += [rng.uniform(LOW, HIGH).astype(np.float32) for _ in range(EPISODE_STEPS - 2)]
        for action in actions:
            observation, *_ = env.step(action)
            observations.append(observation)
        stacked = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
        ends = np.eye(1, EPISODE_STEPS, EPISODE_STEPS - 1, dtype=bool)[0]
        buffers.append(EpisodeBuffer(id=index, observations=stacked, actions=np.stack(actions),
                                     rewards=np.full(EPISODE_STEPS, float(index % 4)),
                                     terminations=np.zeros(EPISODE_STEPS, bool), truncations=ends))
        episodes.append((observations, np.stack(actions)))
    minari.create_dataset_from_buffers(DATASET_ID, buffers, env=env, algorithm_name="random",
                                       ref_min_score=REF_MIN, ref_max_score=REF_MAX)
    yield episodes
    gymnasium.registry.pop(ENV_ID, None)
    if previous is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = previous


def test_dict_observations_are_flattened_in_sorted_key_order_by_the_data_and_the_env(dict_dataset):
    from rql_cli.data.sources import DataSpec
    from rql_cli.envs.external import make_external_env
    from rql_cli.names import parse_task_name

    data = DataSpec(name=f"minari:{DATASET_ID}").load(sparse_rewards=False).train
    expected = np.stack([flat(o) for observations, _ in dict_dataset for o in observations[:-1]])
    following = np.stack([flat(o) for observations, _ in dict_dataset for o in observations[1:]])
    np.testing.assert_array_equal(data.observations.numpy(), expected)
    np.testing.assert_array_equal(data.next_observations.numpy(), following)

    env = make_external_env(parse_task_name(f"minari:{DATASET_ID}"))
    raw = RecordingDictEnv()
    observation, _ = env.reset(seed=3)
    np.testing.assert_array_equal(observation, flat(raw.reset(seed=3)[0]))  # the order the data has
    observation, *_ = env.step(np.zeros(2, np.float32))
    raw.step(np.zeros(2, np.float32))
    np.testing.assert_array_equal(observation, flat(raw._observation()))
    env.close()


def test_actions_are_in_unit_range_in_the_data_and_mapped_back_to_the_env_bounds(dict_dataset):
    from rql_cli.data.sources import DataSpec
    from rql_cli.envs.external import make_external_env
    from rql_cli.names import parse_task_name

    data = DataSpec(name=f"minari:{DATASET_ID}").load(sparse_rewards=False).train
    actions = np.concatenate([a for _, a in dict_dataset])
    unit = 2.0 * (actions - LOW) / (HIGH - LOW) - 1.0  # [-2, 2] -> a / 2; [0, 5] -> 0.4 a - 1
    np.testing.assert_allclose(data.actions.numpy(), np.clip(unit, -1 + 1e-5, 1 - 1e-5), rtol=1e-6, atol=1e-7)
    assert data.actions.min() >= -1 and data.actions.max() <= 1

    env = make_external_env(parse_task_name(f"minari:{DATASET_ID}"))
    env.reset(seed=0)
    RECEIVED.clear()
    for action in ([-1, -1], [1, 1], [0, 0], [0.5, -0.5]):
        env.step(np.array(action, np.float32))
    env.close()
    np.testing.assert_allclose(np.stack(RECEIVED), [[-2, 0], [2, 5], [0, 2.5], [1, 1.25]], atol=1e-6)


def test_the_normalised_score_and_its_interval_match_a_hand_computation(dict_dataset, tmp_path):
    from rql_cli.cli.app import app

    runner = CliRunner()
    run = tmp_path / "run"
    small = ["--set", "actor_hidden_dims=[16]", "--set", "value_hidden_dims=[16]", "--set", "ensemble_size=2",
             "--set", "batch_size=8", "--set", "flow_steps=2", "--set", "compile=off", "--device", "cpu"]
    result = runner.invoke(app, ["train", "--dataset", f"minari:{DATASET_ID}", "--steps", "2", "--eval-episodes", "0",
                                 *small, "--out", str(run)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--checkpoint", str(run), "--episodes", "5", "--envs", "1", "--seed", "6",
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    task = json.loads((tmp_path / "r.json").read_text())["tasks"][0]
    assert task["seeds"] == [6, 7, 8, 9, 10]
    # Episode returns: 5 steps of reward seed % 4 -> 10, 15, 0, 5, 10; scores 100 (R + 5) / 20.
    assert task["returns"] == [10.0, 15.0, 0.0, 5.0, 10.0]
    scores = [75.0, 100.0, 25.0, 50.0, 75.0]
    mean, half = statistics.mean(scores), 1.96 * statistics.stdev(scores) / math.sqrt(5)
    assert task["normalized_score"] == pytest.approx(65.0) == pytest.approx(mean)
    assert task["normalized_score_ci95"] == pytest.approx([mean - half, mean + half])
    assert half == pytest.approx(1.96 * math.sqrt(812.5 / 5))  # sample variance of the scores: 3250 / 4
