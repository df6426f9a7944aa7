"""Make OGBench manipulation datasets on this machine with ogbench's own scripted oracles.

The official cube, scene and puzzle datasets were collected by scripted oracles that ship inside the
ogbench wheel (``ogbench.manipspace.oracles``); the driver that ran them does not, so this module is our
driver. It follows the published procedure (``design/data.md``), with one addition: every episode is
seeded, so the same ``seed`` gives the same arrays on any number of worker processes.

Procedure, per episode:

1. ``env.reset(seed=...)`` on the base env (``cube-single-v0``, ``scene-v0``, ...) made in
   ``mode='data_collection'``; the env draws a random scene and a first target.
2. The oracle for ``info['privileged/target_task']`` (``'cube'``, ``'button'``, ``'drawer'``,
   ``'window'``) acts. ``play`` sets use the plan oracles with smoothed noise; ``noisy`` sets use the
   Markov oracles plus per-episode Gaussian action noise and occasional uniform random actions.
3. When the acting oracle is done, ``env.unwrapped.set_new_target(p_stack=...)`` draws a new target and
   the matching oracle is reset with the observation and info that call returns.
4. After ``episode_length`` steps (1001 for the official sets) the episode ends; scene episodes in which
   a cube leaves the camera's view are drawn again.

Each row holds the state *before* the step: the observation, the clipped action taken from it, and
``info['prev_qpos']``, ``info['prev_qvel']`` (and ``info['prev_button_states']``) from the step's info.

Files: ``{name}.npz`` (train) and ``{name}-val.npz`` are ``np.savez_compressed`` archives in the
official layout, N = episodes x ``episode_length`` rows, episodes back to back:

- ``observations``: (N, obs_dim) float32, the observation before the step.
- ``actions``: (N, 5) float32 in [-1, 1], the clipped action taken from that observation
  (relative effector x, y, z, yaw and gripper opening, normalised).
- ``terminals``: (N,) bool, True on the last row of each episode.
- ``qpos``: (N, nq) float32 and ``qvel``: (N, nv) float32, MuJoCo state before the step.
- ``button_states``: (N, num_buttons) int64, scene and puzzle only, button states before the step
  (int64 like the env's own array: ``env.unwrapped.set_state`` indexes with it).

ogbench's loader drops each episode's last row, so E episodes give E x (episode_length - 1)
transitions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from rql_cli.errors import RQLError, UnknownNameError, closest_names
from rql_cli.names import ENV_FAMILIES, TaskName, parse_task_name

# Bump when the collection procedure changes, so cached partial episodes from an older version are
# not mixed into a new file.
_PROCEDURE_VERSION = 1

_SPLIT_CODES = {"train": 0, "val": 1}

Key = tuple[str, int]
"""An episode's identity: (split ``'train'`` or ``'val'``, index within the split)."""

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


@dataclasses.dataclass(frozen=True)
class DatasetRecipe:
    """How one OGBench manipulation dataset is collected.

    Attributes:
        env_id: base gymnasium id made in data-collection mode, e.g. ``'cube-double-v0'``.
        oracle: ``'plan'`` (``play`` sets) or ``'markov'`` (``noisy`` sets).
        num_episodes: train episodes in the official set; the ``-val`` file holds a tenth as many.
        p_stack: ``(low, high)``; each episode draws its stacking probability from U(low, high).
            Equal ends mean a fixed value. Puzzle envs ignore it.
        p_random_action: probability of a uniform random action in [-1, 1]^5 at each step
            (``noisy`` sets only).
    """

    env_id: str
    oracle: Literal["plan", "markov"]
    num_episodes: int
    p_stack: tuple[float, float]
    p_random_action: float = 0.0

    @property
    def family(self) -> Literal["cube", "scene", "puzzle"]:
        """Which env class: ``'cube'``, ``'scene'`` or ``'puzzle'``."""
        return self.env_id.split("-")[0]  # type: ignore[return-value]

    @property
    def num_val_episodes(self) -> int:
        """Episodes in the official ``-val`` file."""
        return self.num_episodes // 10

    @property
    def has_button_states(self) -> bool:
        """Whether rows carry ``button_states`` (scene and puzzle keep them outside qpos)."""
        return self.family in ("scene", "puzzle")


# The families our oracles can collect, with what the official collection used for each: train
# episodes and the p_stack range. Their dataset types come from rql_cli.names.ENV_FAMILIES.
_OFFICIAL_COLLECTION: dict[str, tuple[int, tuple[float, float]]] = {
    "cube-single": (1000, (0.0, 0.0)),
    "cube-double": (1000, (0.0, 0.25)),
    "cube-triple": (3000, (0.05, 0.35)),
    "cube-quadruple": (5000, (0.1, 0.5)),
    "scene": (1000, (0.5, 0.5)),
    "puzzle-3x3": (1000, (0.0, 0.0)),
    "puzzle-4x4": (1000, (0.0, 0.0)),
    "puzzle-4x5": (3000, (0.0, 0.0)),
    "puzzle-4x6": (5000, (0.0, 0.0)),
}
_ORACLE_OF_DATASET_TYPE: dict[str, Literal["plan", "markov"]] = {"play": "plan", "noisy": "markov"}


def _random_action_probability(family: str, dataset_type: str) -> float:
    """Per-step probability of a uniform random action: ``noisy`` sets only, higher for puzzles."""
    if dataset_type != "noisy":
        return 0.0
    return 0.2 if family.startswith("puzzle") else 0.1


def _recipes() -> dict[str, DatasetRecipe]:
    """One recipe per dataset type that rql_cli.names lists for each family we can collect."""
    table = {}
    for family, (episodes, p_stack) in _OFFICIAL_COLLECTION.items():
        dataset_types, _ = ENV_FAMILIES[family]
        for dataset_type in dataset_types:
            table[TaskName(family, dataset_type).dataset_name] = DatasetRecipe(
                env_id=f"{family}-v0",
                oracle=_ORACLE_OF_DATASET_TYPE[dataset_type],
                num_episodes=episodes,
                p_stack=p_stack,
                p_random_action=_random_action_probability(family, dataset_type),
            )
    return table


GENERATABLE: dict[str, DatasetRecipe] = _recipes()
"""Dataset names this module can make (file stems, e.g. ``cube-single-play-v0``) and their recipes."""


def generate_dataset(
    name: str,
    out_dir: Path,
    num_episodes: int | None = None,
    num_val_episodes: int | None = None,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    on_episode: Callable[[int, int], None] | None = None,
    episode_length: int = 1001,
) -> list[Path]:
    """Collect a dataset and write ``{out_dir}/{name}.npz`` and ``{out_dir}/{name}-val.npz``.

    The files hold N = episodes x ``episode_length`` rows in the official layout (module docstring).

    Episode k of split s (``'train'`` or ``'val'``) depends only on (seed, s, k): the same seed gives
    identical arrays for any ``workers``, and changing ``num_episodes`` keeps the episodes both runs
    share. Finished episodes are cached in ``{out_dir}/.{name}.partial/`` so an interrupted run picks up
    where it stopped; the folder is removed once both files are written.

    Args:
        name: a key of ``GENERATABLE``, e.g. ``'cube-single-play-v0'``.
        out_dir: folder for the two files; created if missing.
        num_episodes: train episodes; default the official count (``GENERATABLE[name].num_episodes``).
        num_val_episodes: val episodes; default a tenth of ``num_episodes`` (at least 1).
        seed: base seed of every episode.
        workers: processes collecting episodes; 1 runs in this process.
        force: overwrite existing output files instead of refusing.
        on_episode: called in this process as ``on_episode(done, total)`` after each episode (cached
            ones included), with ``total`` = train + val episodes.
        episode_length: steps per episode; 1001 matches the official sets, shorter is for tests and
            quick looks.

    Returns:
        ``[train_path, val_path]``.

    Raises:
        UnknownNameError: ``name`` is not in ``GENERATABLE``.
        RQLError: an output file exists and ``force`` is False, or an argument is out of range.
        RuntimeError: a worker process died (rerun with ``workers=1`` to see why).
    """
    recipe = _lookup(name)
    num_episodes = recipe.num_episodes if num_episodes is None else num_episodes
    if num_val_episodes is None:
        num_val_episodes = max(1, num_episodes // 10)
    _check_counts(num_episodes, num_val_episodes, workers, episode_length)
    out_dir = Path(out_dir)
    train_path, val_path = _claim_output_paths(out_dir, name, force)

    cache = _EpisodeCache(out_dir / f".{name}.partial", name, seed, episode_length)
    jobs = [("train", k) for k in range(num_episodes)] + [("val", k) for k in range(num_val_episodes)]
    episodes = _collect_episodes(jobs, cache, name, seed, episode_length, workers, on_episode)
    train = _concatenate([episodes[("train", k)] for k in range(num_episodes)])
    val = _concatenate([episodes[("val", k)] for k in range(num_val_episodes)])
    _write_npz_pair([(train_path, train), (val_path, val)])
    cache.remove()
    return [train_path, val_path]


def size_tag(transitions: int) -> str:
    """How OGBench names a dataset's size: 100_000_000 -> ``'100m'``, 1e9 -> ``'1b'``, 40_000 -> ``'40k'``."""
    for unit, letter in ((10**9, "b"), (10**6, "m"), (10**3, "k")):
        if transitions >= unit and transitions % unit == 0:
            return f"{transitions // unit}{letter}"
    return str(transitions)


def shard_folder_name(name: str, transitions: int) -> str:
    """The folder of a sharded set, named like the official ones: ``puzzle-4x4-play-100m-v0``."""
    stem, _, version = name.rpartition("-")
    return f"{stem}-{size_tag(transitions)}-{version}"


def generate_shards(
    name: str,
    out_dir: Path,
    num_episodes: int | None,
    shard_size: int,
    num_val_episodes: int | None = None,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    on_episode: Callable[[int, int], None] | None = None,
    episode_length: int = 1001,
) -> list[Path]:
    """Collect a dataset as a shard folder, laid out like the official 100M-transition sets.

    ``{out_dir}/{stem}-{size}-{version}/`` (e.g. ``cube-single-play-40k-v0``) holds
    ``{name}-000.npz``, ``{name}-000-val.npz``, ``{name}-001.npz``, ...: shard i has train episodes
    [i * shard_size, (i + 1) * shard_size) of the same seeded sequence ``generate_dataset`` draws (so the
    shards of a seed concatenate to the single file of that seed), and its own validation episodes.

    Shards are written one at a time as they finish (memory: one shard's episodes); an interrupted
    run keeps its finished shards and its cached episodes and picks up where it stopped.

    Args:
        num_episodes: train episodes in all (default the official count); the last shard holds the remainder.
        shard_size: train episodes per shard (the official 100M sets: 1000, i.e. 1M transitions).
        num_val_episodes: validation episodes per shard; default a tenth of ``shard_size`` (at least 1).
        The rest as in ``generate_dataset``.

    Returns:
        The training shards, in order.
    """
    recipe = _lookup(name)
    num_episodes = recipe.num_episodes if num_episodes is None else num_episodes
    if shard_size < 1:
        raise RQLError(f"shard_size must be at least 1 episode, got {shard_size}.")
    val_per_shard = max(1, shard_size // 10) if num_val_episodes is None else num_val_episodes
    _check_counts(num_episodes, val_per_shard, workers, episode_length)
    num_shards = -(-num_episodes // shard_size)
    folder = Path(out_dir) / shard_folder_name(name, num_episodes * (episode_length - 1))
    width = max(3, len(str(num_shards - 1)))
    paths = [(folder / f"{name}-{i:0{width}d}.npz", folder / f"{name}-{i:0{width}d}-val.npz") for i in range(num_shards)]
    cache_folder = Path(out_dir) / f".{folder.name}.partial"
    interrupted = cache_folder.is_dir()
    existing = [p for pair in paths for p in pair if p.exists()]
    if existing and not force and not interrupted:
        raise RQLError(f"{folder} already holds shards ({existing[0].name}, ...). Pass --force to overwrite, "
                       "or choose another folder.")
    if force:
        for path in existing:
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    cache = _EpisodeCache(cache_folder, name, seed, episode_length)
    total = num_episodes + num_shards * val_per_shard
    done_before = 0
    for i, (train_path, val_path) in enumerate(paths):
        train_keys = [("train", k) for k in range(i * shard_size, min((i + 1) * shard_size, num_episodes))]
        val_keys = [("val", k) for k in range(i * val_per_shard, (i + 1) * val_per_shard)]
        if train_path.is_file() and val_path.is_file():
            done_before += len(train_keys) + len(val_keys)
            if on_episode is not None:
                on_episode(done_before, total)
            continue

        def progress(done: int, _: int, offset: int = done_before) -> None:
            if on_episode is not None:
                on_episode(offset + done, total)

        episodes = _collect_episodes(train_keys + val_keys, cache, name, seed, episode_length, workers, progress)
        _write_npz_pair([
            (train_path, _concatenate([episodes[key] for key in train_keys])),
            (val_path, _concatenate([episodes[key] for key in val_keys])),
        ])
        done_before += len(train_keys) + len(val_keys)
        del episodes
    cache.remove()
    return [train for train, _ in paths]


def _claim_output_paths(out_dir: Path, name: str, force: bool) -> tuple[Path, Path]:
    """The train and val paths; refuses existing files unless ``force``, and creates ``out_dir``."""
    train_path = out_dir / f"{name}.npz"
    val_path = out_dir / f"{name}-val.npz"
    existing = [p for p in (train_path, val_path) if p.exists()]
    if existing and not force:
        listed = " and ".join(str(p) for p in existing)
        verb = "exists" if len(existing) == 1 else "exist"
        raise RQLError(f"{listed} already {verb}. Pass --force to overwrite, or choose another folder.")
    out_dir.mkdir(parents=True, exist_ok=True)
    return train_path, val_path


def _collect_episodes(
    jobs: list[Key], cache: _EpisodeCache, name: str, seed: int, episode_length: int, workers: int,
    on_episode: Callable[[int, int], None] | None,
) -> dict[Key, dict[str, np.ndarray]]:
    """Every episode of ``jobs``: cached ones first, then the missing ones, each cached as it comes.

    ``on_episode(done, len(jobs))`` follows every episode, cached or new.
    """
    episodes: dict[Key, dict[str, np.ndarray]] = {}

    def finished(key: Key, episode: dict[str, np.ndarray]) -> None:
        episodes[key] = episode
        if on_episode is not None:
            on_episode(len(episodes), len(jobs))

    for key in jobs:
        episode = cache.load(key)
        if episode is not None:
            finished(key, episode)
    todo = [key for key in jobs if key not in episodes]
    if not todo:
        return episodes
    if workers == 1:
        stream = _collect_in_this_process(todo, name, seed, episode_length)
    else:
        stream = _collect_in_processes(todo, workers, name, seed, episode_length)
    try:
        for key, episode in stream:
            cache.save(key, episode)
            finished(key, episode)
    finally:
        stream.close()  # stops the collection now if on_episode raised or the user interrupted
    return episodes


def _collect_in_this_process(
    todo: list[Key], name: str, seed: int, episode_length: int
) -> Iterator[tuple[Key, dict[str, np.ndarray]]]:
    """Episodes of ``todo`` collected here, one after another, yielded as they finish."""
    collector = _EpisodeCollector(name, seed, episode_length)
    saved_global_state = np.random.get_state()  # the oracles draw from np.random; leave ours as it was
    try:
        for key in todo:
            yield key, collector.collect(*key)
    finally:
        np.random.set_state(saved_global_state)
        collector.close()


def _lookup(name: str) -> DatasetRecipe:
    """The recipe of ``name``; UnknownNameError naming the dataset file for a task name, or the
    closest generatable names otherwise."""
    if name in GENERATABLE:
        return GENERATABLE[name]
    names = sorted(GENERATABLE)
    try:
        parsed = parse_task_name(name)
    except RQLError:  # an unknown name, or a task outside 1..5: answered with suggestions below
        parsed = None
    if parsed is not None and parsed.dataset_name in GENERATABLE and parsed.env_id() == name:
        # Users often pass the env name they train on; the file behind it drops 'singletask' and 'taskN'.
        file_stem = parsed.dataset_name
        raise UnknownNameError(
            f"'{name}' is a task name; its dataset file is '{file_stem}'. Generate '{file_stem}' instead."
        )
    if parsed is not None and parsed.dataset_name not in GENERATABLE:
        # A real OGBench dataset, but not one of the manipulation sets made by scripted oracles.
        raise UnknownNameError(
            f"'{parsed.dataset_name}' is an OGBench dataset that rql cannot generate: only the manipulation "
            "sets (cube, scene, puzzle) have scripted oracles in ogbench; the locomotion ones come from trained "
            "expert policies that are not shipped. "
            f"Put the official {parsed.dataset_name}.npz and {parsed.dataset_name}-val.npz in a folder and pass it "
            f"as --dataset-dir. Datasets that can be generated: {', '.join(names)}."
        )
    close = closest_names(name, names)
    hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else ""
    raise UnknownNameError(
        f"Cannot generate dataset '{name}'.{hint} Datasets that can be generated (`rql list` shows them "
        f"too): {', '.join(names)}."
    )


def _check_counts(num_episodes: int, num_val_episodes: int, workers: int, episode_length: int) -> None:
    if num_episodes < 1:
        raise RQLError(f"num_episodes must be at least 1, got {num_episodes}.")
    if num_val_episodes < 1:
        # ogbench's loader cannot read an empty -val file.
        raise RQLError(f"num_val_episodes must be at least 1, got {num_val_episodes}.")
    if workers < 1:
        raise RQLError(f"workers must be at least 1, got {workers}.")
    if episode_length < 2:
        # The loader drops each episode's last row; one row would leave no transitions.
        raise RQLError(f"episode_length must be at least 2, got {episode_length}.")


def _episode_seeds(
    seed: int, split: str, index: int, attempt: int
) -> tuple[int, np.ndarray, np.random.Generator]:
    """Seeds for one try at one episode: (env reset seed, np.random seed words, our own generator)."""
    sequence = np.random.SeedSequence([seed, _SPLIT_CODES[split], index, attempt])
    env_seq, legacy_seq, own_seq = sequence.spawn(3)
    env_seed = int(env_seq.generate_state(1, np.uint64)[0])
    return env_seed, legacy_seq.generate_state(4), np.random.default_rng(own_seq)


def _cube_outside_view(block_xyzs: np.ndarray) -> bool:
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


class _EpisodeCollector:
    """One env and its oracles, reused across episodes (making the env takes seconds)."""

    def __init__(self, name: str, seed: int, episode_length: int):
        self.recipe = GENERATABLE[name]
        self.seed = seed
        self.episode_length = episode_length
        self.env = _make_collection_env(self.recipe.env_id, episode_length)
        self.oracles = _make_oracles(self.env, self.recipe)

    def close(self) -> None:
        self.env.close()

    def collect(self, split: str, index: int) -> dict[str, np.ndarray]:
        """Episode ``index`` of ``split``; scene episodes whose cube leaves the view are drawn again."""
        for attempt in range(_MAX_ATTEMPTS):
            episode = self._rollout(*_episode_seeds(self.seed, split, index, attempt))
            if self.recipe.family != "scene" or not self._lost_a_cube(episode["qpos"]):
                return episode
        raise RuntimeError(
            f"{_MAX_ATTEMPTS} tries at {split} episode {index} all lost a cube from view; "
            "the scene env or its oracles misbehave."
        )

    def _lost_a_cube(self, qpos: np.ndarray) -> bool:
        # Free-joint qpos of cube i starts at 14 + 7 i (after 6 arm and 8 gripper joints): xyz, then quat.
        num_cubes = self.env.unwrapped._num_cubes
        starts = 14 + 7 * np.arange(num_cubes)
        xyz = np.stack([qpos[:, s : s + 3] for s in starts], axis=1)
        return _cube_outside_view(xyz)

    def _rollout(
        self, env_seed: int, legacy_seed: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        recipe, env, length = self.recipe, self.env, self.episode_length
        np.random.seed(legacy_seed)  # the oracles plan and jitter with the global np.random
        ob, info = env.reset(seed=env_seed)
        p_stack = rng.uniform(*recipe.p_stack)
        xi = rng.uniform(0.0, _MAX_XI) if recipe.oracle == "markov" else 0.0

        rows: dict[str, list[np.ndarray]] = {"observations": [], "actions": [], "qpos": [], "qvel": []}
        if recipe.has_button_states:
            rows["button_states"] = []
        oracle = self.oracles[info["privileged/target_task"]]
        oracle.reset(ob, info)
        for _ in range(length):
            if recipe.p_random_action > 0 and rng.random() < recipe.p_random_action:
                action = rng.uniform(-1.0, 1.0, size=5)
            else:
                action = np.asarray(oracle.select_action(ob, info), dtype=np.float64)
                if recipe.oracle == "markov":
                    action = action + rng.normal(0.0, xi * _XI_SCALE)
            action = np.clip(action, -1.0, 1.0)
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
                target_ob, info = env.unwrapped.set_new_target(p_stack=p_stack)
                oracle = self.oracles[info["privileged/target_task"]]
                oracle.reset(target_ob, info)
            ob = next_ob

        terminals = np.zeros(length, dtype=bool)
        terminals[-1] = True
        episode = {
            "observations": np.asarray(rows["observations"], dtype=np.float32),
            "actions": np.asarray(rows["actions"], dtype=np.float32),
            "terminals": terminals,
            "qpos": np.asarray(rows["qpos"], dtype=np.float32),
            "qvel": np.asarray(rows["qvel"], dtype=np.float32),
        }
        if recipe.has_button_states:
            episode["button_states"] = np.asarray(rows["button_states"], dtype=np.int64)
        return episode


def _make_collection_env(env_id: str, episode_length: int):
    import gymnasium

    with warnings.catch_warnings():
        # Making the env imports dm_control's GL backends (glfw warns without a display) and gymnasium
        # warns about float64 bounds; neither matters when nothing is rendered.
        warnings.simplefilter("ignore")
        import ogbench  # noqa: F401  (registers the ids)

        return gymnasium.make(
            env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_length
        )


def _make_oracles(env, recipe: DatasetRecipe) -> dict[str, object]:
    """The oracle for each ``info['privileged/target_task']`` value the env can ask for."""
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


def _collect_in_processes(
    todo: list[Key], workers: int, name: str, seed: int, episode_length: int
) -> Iterator[tuple[Key, dict[str, np.ndarray]]]:
    """Episodes of ``todo`` from ``workers`` spawned processes, yielded as they finish."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # MuJoCo and GL state must not cross a fork: each worker starts fresh and makes its own env.
    # An executor (unlike multiprocessing.Pool) fails instead of respawning a worker that cannot start.
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(name, seed, episode_length),
    )
    try:
        futures = [pool.submit(_collect_in_worker, key) for key in todo]
        for future in as_completed(futures):
            yield future.result()
    except BrokenProcessPool as error:
        raise RuntimeError(
            "A dataset worker process died. Run with one worker (--workers 1) to see its error."
        ) from error
    finally:
        # On an interrupt, drop the queued episodes instead of waiting for them; finished ones are cached.
        pool.shutdown(wait=False, cancel_futures=True)


# Each spawned worker keeps one collector for all its episodes; it exists only inside that process.
_worker_collector: _EpisodeCollector | None = None


def _init_worker(name: str, seed: int, episode_length: int) -> None:
    global _worker_collector
    _worker_collector = _EpisodeCollector(name, seed, episode_length)


def _collect_in_worker(key: Key) -> tuple[Key, dict[str, np.ndarray]]:
    assert _worker_collector is not None, "worker used before _init_worker"
    return key, _worker_collector.collect(*key)


class _EpisodeCache:
    """Finished episodes of one interrupted run, one compressed npz per episode.

    A ``meta.json`` records what the episodes depend on (name, seed, episode length, procedure
    version); a cache made with other values is discarded rather than mixed in.
    """

    def __init__(self, folder: Path, name: str, seed: int, episode_length: int):
        self.folder = folder
        self.meta = {
            "name": name,
            "seed": seed,
            "episode_length": episode_length,
            "procedure_version": _PROCEDURE_VERSION,
        }
        meta_path = folder / "meta.json"
        if folder.exists():
            try:
                matches = json.loads(meta_path.read_text()) == self.meta
            except (OSError, ValueError):
                matches = False
            if not matches:
                shutil.rmtree(folder)
        if not folder.exists():
            folder.mkdir(parents=True)
            meta_path.write_text(json.dumps(self.meta, indent=2))

    def _path(self, key: Key) -> Path:
        split, index = key
        return self.folder / f"{split}-{index:06d}.npz"

    def load(self, key: Key) -> dict[str, np.ndarray] | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path) as file:
                return {k: file[k] for k in file.files}
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # a torn write: collect it again
            return None

    def save(self, key: Key, episode: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **episode)
        os.replace(tmp, path)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _concatenate(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}


def _write_npz_pair(items: list[tuple[Path, dict[str, np.ndarray]]]) -> None:
    """Write each archive under a temporary name in its folder, then move them all into place."""
    staged = []
    try:
        for path, arrays in items:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            staged.append(tmp)
            with open(tmp, "wb") as f:  # a file object, so numpy does not append '.npz' to the name
                np.savez_compressed(f, **arrays)
        for (path, _), tmp in zip(items, staged):
            os.replace(tmp, path)
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
