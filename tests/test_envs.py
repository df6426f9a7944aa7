"""Environments and evaluation: versions, intervals, chunked vectorised evaluation on real OGBench."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rql_cli.envs import evaluate as evaluate_module
from rql_cli.envs.evaluate import evaluate, mean_interval, run_episode, wilson_interval
from rql_cli.envs.make import env_versions, make_eval_env
from rql_cli.errors import CheckpointError, RQLError
from rql_cli.names import parse_task_name

REPO_ROOT = Path(__file__).resolve().parents[1]
CUBE = "cube-single-play-v0"
OBS_DIM, ACTION_DIM = 28, 5


# ----------------------------------------------------------------------------- versions


def test_env_versions_record_ogbench_and_success_timing():
    from importlib.metadata import version

    versions = env_versions(CUBE)
    assert versions["ogbench"] == version("ogbench")
    # ogbench >= 1.2 judges singletask success before the action.
    assert versions["success_timing"] == "pre"
    assert env_versions()["success_timing"] == "pre"


# ----------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    "successes, n, low, high",
    [
        # Hand computed: centre (p + z²/2n) / (1 + z²/n), half width z·sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n).
        # At 0/n the upper end is z²/(n + z²) = 3.8416/13.8416; n/n mirrors it.
        (0, 10, 0.0, 0.27754),
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72246, 1.0),
        (1, 1, 0.20654, 1.0),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, n, low, high):
    got_low, got_high = wilson_interval(successes, n)
    assert got_low == pytest.approx(low, abs=1e-5)
    assert got_high == pytest.approx(high, abs=1e-5)


def test_wilson_interval_holds_the_rate_at_all_or_nothing():
    """100 of 100 must not give an upper end below the rate itself (float rounding gave 0.9999999999999999)."""
    for n in (1, 7, 20, 100, 300):
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
        low, high = wilson_interval(n, n)
        assert low <= 1.0 <= high


def test_wilson_interval_rejects_impossible_counts():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_interval_is_normal_approximation():
    low, high = mean_interval(np.array([1.0, 2.0, 3.0, 4.0]))
    half = 1.96 * np.std([1, 2, 3, 4], ddof=1) / 2.0
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half))
    assert mean_interval(np.array([7.0])) == (7.0, 7.0)


# ----------------------------------------------------------------------------- evaluation, real env


class RecordingPolicy:
    """Deterministic chunk policy that records every batch it is asked for.

    actions = tanh(obs @ W) repeated over the chunk, so trajectories depend on what the env shows.
    """

    def __init__(self, horizon: int):
        self.horizon = horizon
        self.weights = np.random.default_rng(0).normal(size=(OBS_DIM, ACTION_DIM)).astype(np.float32)
        self.batches: list[np.ndarray] = []

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        assert obs.dtype == np.float32 and obs.ndim == 2 and obs.shape[1] == OBS_DIM
        self.batches.append(obs.copy())
        action = np.tanh(obs @ self.weights)
        return np.repeat(action[:, None, :], self.horizon, axis=1)

    @property
    def rows(self) -> int:
        return sum(len(batch) for batch in self.batches)


def test_evaluate_counts_exactly_the_episodes_and_asks_only_empty_queues():
    steps, horizon, episodes = 10, 4, 3
    policy = RecordingPolicy(horizon)
    progress = []
    result = evaluate(
        policy, CUBE, episodes=episodes, num_envs=1, seed=7, max_episode_steps=steps,
        on_episode=lambda shown: progress.append((shown.done, shown.total, shown.success_rate)),
    )  # fmt: skip
    assert result.episodes == episodes
    assert result.seeds == [7, 8, 9]
    assert result.lengths == [steps] * episodes  # random-ish arm motion cannot solve the task in 10 steps
    assert result.returns == [-float(steps)] * episodes  # cube-single rewards -1 per step until solved
    assert result.successes == [False] * episodes and result.success_rate == 0.0
    # One chunk per 4 steps: steps 0, 4, 8 of each episode, and never more.
    assert result.policy_rows == policy.rows == episodes * math.ceil(steps / horizon)
    assert [done for done, _, _ in progress] == [1, 2, 3]
    assert result.env_steps == episodes * steps
    assert result.task == 2 and result.env_id == "cube-single-play-singletask-task2-v0"
    assert result.max_episode_steps == steps
    assert result.success_timing == "pre"


def test_parallel_evaluation_batches_only_envs_that_need_a_chunk_and_keeps_seeds():
    steps, horizon, episodes = 10, 4, 3
    serial, parallel = RecordingPolicy(horizon), RecordingPolicy(horizon)
    one = evaluate(serial, CUBE, episodes=episodes, num_envs=1, seed=3, max_episode_steps=steps)
    two = evaluate(parallel, CUBE, episodes=episodes, num_envs=2, seed=3, max_episode_steps=steps)

    assert two.num_envs == 2 and two.episodes == episodes and two.seeds == [3, 4, 5]
    # Both envs empty their queues together (steps 0, 4, 8): 3 calls of 2 rows; then the third
    # episode runs alone on one env (3 calls of 1 row) while the idle env is never asked.
    assert [len(batch) for batch in parallel.batches] == [2, 2, 2, 1, 1, 1]
    assert two.policy_rows == one.policy_rows == episodes * math.ceil(steps / horizon)
    # Episode i is reset with seed 3 + i whichever env runs it: the same starts and the same outcomes.
    serial_starts = np.stack([serial.batches[k][0] for k in (0, 3, 6)])
    parallel_starts = np.concatenate([parallel.batches[0], parallel.batches[3]])
    np.testing.assert_array_equal(serial_starts, parallel_starts)
    assert one.returns == two.returns and one.lengths == two.lengths
    assert not np.array_equal(serial_starts[0], serial_starts[1])  # different seeds, different starts


def test_same_seed_gives_the_same_trajectories():
    runs = []
    for _ in range(2):
        policy = RecordingPolicy(horizon=3)
        result = evaluate(policy, CUBE, episodes=2, num_envs=1, seed=11, max_episode_steps=12)
        runs.append((np.concatenate(policy.batches), result.returns))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_result_serialises_to_json():
    import json

    result = evaluate(RecordingPolicy(5), CUBE, episodes=2, num_envs=1, max_episode_steps=5)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["episodes"] == 2 and data["seeds"] == [0, 1]
    assert data["success_ci95"] == pytest.approx([0.0, 0.65762], abs=1e-5)
    assert data["ogbench_version"] == env_versions()["ogbench"]


def test_run_episode_plays_the_episodes_evaluate_plays_with_one_env():
    steps, horizon = 9, 4
    evaluated = evaluate(RecordingPolicy(horizon), CUBE, episodes=2, num_envs=1, seed=5, max_episode_steps=steps)
    env = make_eval_env(CUBE, evaluated.task, max_episode_steps=steps)
    try:
        policy = RecordingPolicy(horizon)
        outcomes = [run_episode(env, policy, seed) for seed in evaluated.seeds]
    finally:
        env.close()
    assert [o.length for o in outcomes] == evaluated.lengths
    assert [o.episode_return for o in outcomes] == evaluated.returns
    assert [o.success for o in outcomes] == evaluated.successes
    assert policy.rows == evaluated.policy_rows == 2 * math.ceil(steps / horizon)


def test_a_task_name_and_its_parsed_form_evaluate_alike():
    by_text = evaluate(RecordingPolicy(3), "cube-single-play-singletask-task4-v0", episodes=1, num_envs=1,
                       max_episode_steps=4)  # fmt: skip
    parsed = parse_task_name("cube-single-play-singletask-task4-v0")
    by_parsed = evaluate(RecordingPolicy(3), parsed, episodes=1, num_envs=1, max_episode_steps=4)
    assert by_parsed.to_dict().keys() == by_text.to_dict().keys()
    assert (by_parsed.env_id, by_parsed.returns) == (by_text.env_id, by_text.returns)
    assert by_parsed.dataset_name == "cube-single-play-v0" and by_parsed.task == 4


# ----------------------------------------------------------------------------- checkpoint fit


def test_evaluate_refuses_a_misfit_before_any_policy_call_and_leaves_no_workers():
    import multiprocessing

    def policy(obs):
        raise AssertionError("the policy must not be called when the sizes do not fit")

    asked = []

    def refuse(obs_dim, action_dim, env_name):
        asked.append((obs_dim, action_dim, env_name))
        raise CheckpointError(f"does not fit {env_name}")

    with pytest.raises(CheckpointError, match=f"does not fit {CUBE}"):
        evaluate(policy, CUBE, episodes=2, num_envs=2, check_fit=refuse)
    assert asked == [(OBS_DIM, ACTION_DIM, CUBE)]  # the env's sizes, and the env as the caller named it
    assert multiprocessing.active_children() == []
    fits = evaluate(RecordingPolicy(2), CUBE, episodes=1, num_envs=1, max_episode_steps=2,
                    check_fit=lambda *sizes: asked.append(sizes))  # fmt: skip
    assert fits.episodes == 1 and len(asked) == 2


# ----------------------------------------------------------------------------- evaluation, scripted env


def _scripted_env():
    """Tiny env: succeeds (terminates) at step 3 for even seeds, is truncated at step 6 otherwise."""
    import gymnasium

    class ScriptedEnv(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            # seed None: an idle env being reset after the last episode was handed out.
            self.solvable, self.t = seed is not None and seed % 2 == 0, 0
            return np.full(OBS_DIM, -1.0 if seed is None else float(seed)), {}

        def step(self, action):
            assert np.all(np.abs(action) <= 1.0), "actions must be clipped to the action space"
            self.t += 1
            success = self.solvable and self.t == 3
            return np.zeros(OBS_DIM), 0.0 if success else -1.0, success, self.t == 6, {"success": success}

    return ScriptedEnv()


def test_success_is_the_final_steps_flag_and_return_sums_rewards(monkeypatch):
    monkeypatch.setattr(evaluate_module, "_make_worker_env", lambda *args: _scripted_env())
    rates = []
    big = lambda obs: np.full((len(obs), 2, ACTION_DIM), 5.0)  # noqa: E731  (out of range: must be clipped)
    result = evaluate(big, CUBE, episodes=4, num_envs=1, seed=10, on_episode=lambda shown: rates.append(shown.success_rate))
    assert result.successes == [True, False, True, False]
    assert result.lengths == [3, 6, 3, 6]
    assert result.returns == [-2.0, -6.0, -2.0, -6.0]
    assert result.success_rate == 0.5
    assert result.success_ci95 == pytest.approx(wilson_interval(2, 4))
    assert result.mean_return == -4.0
    assert rates == [1.0, 0.5, 2 / 3, 0.5]


def _early_success_env():
    """Tiny env that reports success at step 2 and goes on to be truncated at step 5; at that last step
    it reports success again for odd seeds and failure for even ones."""
    import gymnasium

    class EarlySuccessEnv(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.ends_solved, self.t = seed is not None and seed % 2 == 1, 0
            return np.zeros(OBS_DIM), {}

        def step(self, action):
            self.t += 1
            success = self.t == 2 or (self.t == 5 and self.ends_solved)
            return np.zeros(OBS_DIM), 0.0 if success else -1.0, False, self.t == 5, {"success": success}

    return EarlySuccessEnv()


@pytest.mark.parametrize("num_envs", [1, 2])
def test_an_episode_that_succeeds_early_but_ends_unsolved_is_a_failure(monkeypatch, num_envs):
    monkeypatch.setattr(evaluate_module, "_make_worker_env", lambda *args: _early_success_env())
    policy = lambda obs: np.zeros((len(obs), 2, ACTION_DIM))  # noqa: E731
    result = evaluate(policy, CUBE, episodes=4, num_envs=num_envs, seed=10)
    assert result.successes == [False, True, False, True]  # seeds 10..13: only the final step counts
    assert result.lengths == [5, 5, 5, 5]  # the early success ended nothing
    assert result.returns == [-4.0, -3.0, -4.0, -3.0]
    assert result.success_rate == 0.5
    outcomes = [run_episode(_early_success_env(), policy, seed) for seed in (10, 11)]
    assert [(o.success, o.length) for o in outcomes] == [(False, 5), (True, 5)]


def test_parallel_envs_with_uneven_episodes_hand_out_each_episode_once(monkeypatch):
    # Episodes alternate 3 and 6 steps, so the two envs finish at different times, sometimes
    # together, and one goes idle while the other finishes the last episode.
    monkeypatch.setattr(evaluate_module, "_make_worker_env", lambda *args: _scripted_env())
    starts = []

    def policy(obs):
        starts.extend(obs[:, 0].tolist())
        return np.zeros((len(obs), 10, ACTION_DIM))  # one chunk outlasts every episode

    result = evaluate(policy, CUBE, episodes=5, num_envs=2, seed=10)
    assert result.successes == [True, False, True, False, True]
    assert result.lengths == [3, 6, 3, 6, 3]
    assert result.seeds == [10, 11, 12, 13, 14]
    assert sorted(starts) == [10.0, 11.0, 12.0, 13.0, 14.0]  # each episode asked once, from its own reset


def _echo_env():
    """Tiny env whose reward is the action's first entry: a return shows which policy acted. Episodes last
    3 steps for even seeds and 5 for odd ones; the observation is (reset seed, step, ...)."""
    import gymnasium

    class EchoEnv(gymnasium.Env):
        observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.seed, self.t = -1 if seed is None else seed, 0
            return self._obs(), {}

        def _obs(self):
            return np.array([self.seed, self.t, *np.zeros(OBS_DIM - 2)], dtype=np.float64)

        def step(self, action):
            self.t += 1
            return self._obs(), float(action[0]), False, self.t == (3 if self.seed % 2 == 0 else 5), {"success": False}

    return EchoEnv()


@pytest.mark.parametrize("together", [True, False])
def test_members_evaluated_together_or_in_turn_each_run_their_own_episodes(monkeypatch, together):
    from rql_cli.envs.evaluate import evaluate_members

    monkeypatch.setattr(evaluate_module, "_make_worker_env", lambda *args: _echo_env())
    asked: dict[int, list[tuple[float, float]]] = {0: [], 1: [], 2: []}

    def member_policy(member: int):
        def act(obs):  # member m acts (m + 1) / 10 in chunks of 2
            asked[member].extend((float(o[0]), float(o[1])) for o in obs)
            return np.full((len(obs), 2, ACTION_DIM), (member + 1) / 10)
        return act

    policies = [member_policy(m) for m in range(3)]
    ended: list[tuple[int, int]] = []
    results = evaluate_members(
        lambda rows: {m: policies[m](obs) for m, obs in rows.items()}, [10, 21, 30], CUBE, episodes=3, num_envs=2,
        together=together, on_episode=lambda member, progress: ended.append((member, progress.episode.seed)),
    )
    seen_together = {m: sorted(rows) for m, rows in asked.items()}
    for member, (result, seed) in enumerate(zip(results, [10, 21, 30], strict=True)):
        assert result.seeds == [seed, seed + 1, seed + 2]
        assert result.lengths == [3 if s % 2 == 0 else 5 for s in result.seeds]
        assert result.returns == pytest.approx([n * (member + 1) / 10 for n in result.lengths])
        assert sorted(s for m, s in ended if m == member) == result.seeds
        asked[member] = []
        alone = evaluate(policies[member], CUBE, episodes=3, num_envs=2, seed=seed)
        assert (alone.returns, alone.lengths, alone.policy_calls, alone.policy_rows) == (
            result.returns, result.lengths, result.policy_calls, result.policy_rows)
        assert sorted(asked[member]) == seen_together[member]  # the same rows: (seed, step) of every chunk asked


def test_policy_returning_the_wrong_shape_is_reported(monkeypatch):
    monkeypatch.setattr(evaluate_module, "_make_worker_env", lambda *args: _scripted_env())
    with pytest.raises(ValueError, match=r"\(1, h, 5\)"):
        evaluate(lambda obs: np.zeros((len(obs), 3, 4)), CUBE, episodes=1, num_envs=1)


# ----------------------------------------------------------------------------- GL


def _run_python(code: str, **env_overrides: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "PYOPENGL_PLATFORM")}
    env.update({k: v for k, v in env_overrides.items() if v is not None})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


_STEP_WITHOUT_RENDER = """
import os
from rql_cli.envs.make import make_eval_env
env = make_eval_env('cube-single-play-v0')
env.reset(seed=0)
env.step(env.action_space.sample())
print('MUJOCO_GL', os.environ.get('MUJOCO_GL'))
"""


@pytest.mark.parametrize("mujoco_gl", [None, "disable"])
def test_make_eval_env_without_render_needs_no_gl(mujoco_gl):
    # No DISPLAY, and MUJOCO_GL either unset (glfw, which cannot open a window here) or 'disable'
    # (mujoco loads no GL backend at all): stepping must still work, and nothing forces EGL on.
    done = _run_python(_STEP_WITHOUT_RENDER, MUJOCO_GL=mujoco_gl)
    assert done.returncode == 0, done.stderr
    assert f"MUJOCO_GL {mujoco_gl}" in done.stdout


def test_render_picks_egl_when_the_user_set_nothing():
    code = """
import os
from rql_cli.envs.make import make_eval_env
env = make_eval_env('cube-single-play-v0', render=True, width=64, height=48)
env.reset(seed=0)
frame = env.render()
print('MUJOCO_GL', os.environ.get('MUJOCO_GL'), frame.shape, frame.dtype, int(frame.max()))
"""
    done = _run_python(code)
    assert done.returncode == 0, done.stderr
    words = done.stdout.split()
    assert words[:5] == ["MUJOCO_GL", "egl", "(48,", "64,", "3)"]
    assert words[5] == "uint8" and int(words[6]) > 0  # a real picture, not a black frame


def test_invalid_mujoco_gl_is_reported_with_a_fix(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "nonexistent")
    with pytest.raises(RQLError, match="MUJOCO_GL=egl"):
        make_eval_env(CUBE)
