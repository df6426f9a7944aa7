"""One episode of an OGBench manipulation dataset, collected with ogbench's own scripted oracles.

The official cube, scene and puzzle datasets were collected by scripted oracles that ship inside the
ogbench wheel (``ogbench.manipspace.oracles``); the driver that ran them does not, so this module is
ours. It follows the published procedure (``design/data.md``), with one addition: every episode is
seeded, so the same seed gives the same arrays on any number of worker processes.

Procedure, per episode:

1. ``env.reset(seed=...)`` on the base env (``cube-single-v0``, ``scene-v0``, ...) made in
   ``mode='data_collection'`` (``rql_cli.envs.make.make_collection_env``); the env draws a random
   scene and a first target.
2. The oracle for ``info['privileged/target_task']`` (``'cube'``, ``'button'``, ``'drawer'``,
   ``'window'``) acts. ``play`` sets use the plan oracles with smoothed noise; ``noisy`` sets use the
   Markov oracles plus per-episode Gaussian action noise and occasional uniform random actions.
3. When the acting oracle is done, ``env.unwrapped.set_new_target(p_stack=...)`` draws a new target and
   the matching oracle is reset with the observation and info that call returns.
4. After ``episode_length`` steps (1001 for the official sets) the episode ends; scene episodes in which
   a cube leaves the camera's view are drawn again.

Each row holds the state *before* the step: the observation, the clipped action taken from it, and
``info['prev_qpos']``, ``info['prev_qvel']`` (and ``info['prev_button_states']``) from the step's info.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rql_cli.data.recipes import DatasetRecipe, EpisodeSpec
from rql_cli.envs.make import make_collection_env

if TYPE_CHECKING:
    from gymnasium import Env
    from ogbench.manipspace.envs.manipspace_env import ManipSpaceEnv

_SPLIT_CODES = {"train": 0, "val": 1}

# Official `play` oracle settings: plan-noise scale and its Gaussian smoothing (in plan steps).
_PLAN_NOISE = 0.1
_PLAN_NOISE_SMOOTHING = 0.5

# Official `noisy` oracle settings: minimum action norm of the Markov oracles, the upper end of the
# per-episode noise level xi ~ U(0, _MAX_XI), and the per-dimension multipliers of xi
# (x, y, z, yaw, gripper).
_MARKOV_MIN_NORM = 0.4
_MAX_XI = 0.1
_XI_SCALE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])

# A scene episode is drawn again when its cube leaves the view; this many draws in a row without a
# clean episode means something else is wrong.
_MAX_ATTEMPTS = 100


def episode_seeds(seed: int, split: str, index: int, attempt: int) -> tuple[int, np.ndarray, np.random.Generator]:
    """Seeds for one try at one episode: (env reset seed, np.random seed words, our own generator)."""
    sequence = np.random.SeedSequence([seed, _SPLIT_CODES[split], index, attempt])
    env_seq, legacy_seq, own_seq = sequence.spawn(3)
    env_seed = int(env_seq.generate_state(1, np.uint64)[0])
    return env_seed, legacy_seq.generate_state(4), np.random.default_rng(own_seq)


def cube_outside_view(block_xyzs: np.ndarray) -> bool:
    """Whether a scene cube left the camera's view at any row.

    ogbench's scene env only repairs wild cube positions in task mode and leaves data collection to
    filter "with a more stringent check" outside the class. The official collection drew scene
    episodes again when a cube went past y >= 0.29 (right edge of the view), or past y <= -0.3 (left
    edge, where the drawer is) while not at the drawer's inner height 0.06 <= z <= 0.08. We use the
    same bounds so test-time goals never show a missing cube.

    Args:
        block_xyzs: (T, num_cubes, 3) cube centres in metres (world frame).
    """
    y, z = block_xyzs[..., 1], block_xyzs[..., 2]
    too_far_right = y >= 0.29
    too_far_left_outside_drawer = (y <= -0.3) & ((z < 0.06) | (z > 0.08))
    return bool(np.any(too_far_right | too_far_left_outside_drawer))


class Oracle(Protocol):
    """What each of ogbench's scripted oracles (plan and Markov, every task kind) offers."""

    done: bool
    """The current target is reached: time for ``set_new_target``."""

    def reset(self, ob: np.ndarray, info: dict[str, Any]) -> None: ...

    def select_action(self, ob: np.ndarray, info: dict[str, Any]) -> np.ndarray: ...


class EpisodeCollector:
    """One env and its oracles, reused across the episodes of one ``EpisodeSpec`` (making the env
    takes seconds)."""

    def __init__(self, spec: EpisodeSpec):
        self.spec = spec
        self.recipe = spec.recipe
        self.env = make_collection_env(self.recipe.env_id, spec.episode_length)
        self.base: ManipSpaceEnv = self.env.unwrapped  # the oracles' targets and the cube count live here
        self.oracles = make_oracles(self.env, self.recipe)

    def close(self) -> None:
        self.env.close()

    def collect(self, split: str, index: int) -> dict[str, np.ndarray]:
        """Episode ``index`` of ``split``; scene episodes whose cube leaves the view are drawn again."""
        for attempt in range(_MAX_ATTEMPTS):
            episode = self._rollout(*episode_seeds(self.spec.seed, split, index, attempt))
            if self.recipe.family != "scene" or not self._lost_a_cube(episode["qpos"]):
                return episode
        raise RuntimeError(
            f"{_MAX_ATTEMPTS} tries at {split} episode {index} all lost a cube from view; "
            "the scene env or its oracles misbehave."
        )

    def _lost_a_cube(self, qpos: np.ndarray) -> bool:
        # Free-joint qpos of cube i starts at 14 + 7 i (after 6 arm and 8 gripper joints): xyz, then quat.
        num_cubes = self.base._num_cubes
        starts = 14 + 7 * np.arange(num_cubes)
        xyz = np.stack([qpos[:, s : s + 3] for s in starts], axis=1)
        return cube_outside_view(xyz)

    def _rollout(self, env_seed: int, legacy_seed: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One episode's rows (module docstring), each holding the state before its step."""
        recipe, env = self.recipe, self.env
        np.random.seed(legacy_seed)  # the oracles plan and jitter with the global np.random
        ob, info = env.reset(seed=env_seed)
        p_stack = rng.uniform(*recipe.p_stack)
        xi = rng.uniform(0.0, _MAX_XI) if recipe.oracle == "markov" else 0.0

        keys = ["observations", "actions", "qpos", "qvel"] + (["button_states"] if recipe.has_button_states else [])
        rows: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        oracle = self.oracles[info["privileged/target_task"]]
        oracle.reset(ob, info)
        for _ in range(self.spec.episode_length):
            action = np.clip(self._action(oracle, ob, info, rng, xi), -1.0, 1.0)
            next_ob, _, _, _, info = env.step(action)
            rows["observations"].append(ob)
            rows["actions"].append(action)
            rows["qpos"].append(info["prev_qpos"])
            rows["qvel"].append(info["prev_qvel"])
            if recipe.has_button_states:
                rows["button_states"].append(info["prev_button_states"])
            if oracle.done:
                # The step's info still describes the finished target; the new oracle (and the next
                # action) must see the info that comes with the new target.
                target_ob, info = self.base.set_new_target(p_stack=p_stack)
                oracle = self.oracles[info["privileged/target_task"]]
                oracle.reset(target_ob, info)
            ob = next_ob
        return _episode_arrays(rows)

    def _action(
        self, oracle: Oracle, ob: np.ndarray, info: dict[str, Any], rng: np.random.Generator, xi: float
    ) -> np.ndarray:
        """The action before clipping: a uniform random one now and then (``noisy`` sets), else the
        oracle's, with Gaussian noise of level ``xi`` for the Markov oracles."""
        recipe = self.recipe
        if recipe.p_random_action > 0 and rng.random() < recipe.p_random_action:
            return rng.uniform(-1.0, 1.0, size=5)
        action = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
        if recipe.oracle == "markov":
            action = action + rng.normal(0.0, xi * _XI_SCALE)
        return action


def _episode_arrays(rows: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """The collected rows as the file's arrays (dtypes of the official files), with ``terminals``."""
    length = len(rows["observations"])
    terminals = np.zeros(length, dtype=bool)
    terminals[-1] = True
    episode = {
        "observations": np.asarray(rows["observations"], dtype=np.float32),
        "actions": np.asarray(rows["actions"], dtype=np.float32),
        "terminals": terminals,
        "qpos": np.asarray(rows["qpos"], dtype=np.float32),
        "qvel": np.asarray(rows["qvel"], dtype=np.float32),
    }
    if "button_states" in rows:
        # int64 like the env's own array: env.unwrapped.set_state indexes with it.
        episode["button_states"] = np.asarray(rows["button_states"], dtype=np.int64)
    return episode


def make_oracles(env: Env, recipe: DatasetRecipe) -> dict[str, Oracle]:
    """The oracle for each ``info['privileged/target_task']`` value the env can ask for."""
    # ogbench's oracles are imported here: only data generation needs them (and ogbench takes seconds).
    if recipe.oracle == "plan":
        from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
        from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
        from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
        from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

        noise = dict(noise=_PLAN_NOISE, noise_smoothing=_PLAN_NOISE_SMOOTHING)
        if recipe.family == "cube":
            return {"cube": CubePlanOracle(env=env, **noise)}
        if recipe.family == "scene":
            return {
                "cube": CubePlanOracle(env=env, **noise),
                "button": ButtonPlanOracle(env=env, **noise),
                "drawer": DrawerPlanOracle(env=env, **noise),
                "window": WindowPlanOracle(env=env, **noise),
            }
        # Puzzle buttons are pressed with a closed gripper.
        return {"button": ButtonPlanOracle(env=env, gripper_always_closed=True, **noise)}

    from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
    from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
    from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
    from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

    norm = dict(min_norm=_MARKOV_MIN_NORM)
    if recipe.family == "cube":
        return {"cube": CubeMarkovOracle(env=env, **norm)}
    if recipe.family == "scene":
        return {
            "cube": CubeMarkovOracle(env=env, max_step=100, **norm),
            "button": ButtonMarkovOracle(env=env, **norm),
            "drawer": DrawerMarkovOracle(env=env, **norm),
            "window": WindowMarkovOracle(env=env, **norm),
        }
    return {"button": ButtonMarkovOracle(env=env, gripper_always_closed=True, **norm)}
