"""`rql data verify`: does a dataset file (or shard folder) look like an official OGBench set?

A file can load and still be wrong: actions scaled past [-1, 1], a NaN in the state, a torn episode,
observations of another env. Each check here says what it found, what the official sets hold, and
whether the difference breaks training (``fail``) or is only unlike the official files (``note``:
fewer episodes, shorter episodes, as ``rql data generate --episodes 100`` makes on purpose).

What the official manipulation sets hold (``design/data.md``): ``observations`` (N, obs_dim) float32,
``actions`` (N, 5) float32 in [-1, 1], ``terminals`` (N,) bool on each episode's last row, ``qpos``
(N, nq) and ``qvel`` (N, nv) float32, ``button_states`` (N, buttons) for scene and puzzle; episodes of
1001 rows; 1000 train episodes (+ 100 in ``-val``) for cube-single/double, scene, puzzle-3x3/4x4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rql_cli.data.shards import VAL_SUFFIX, list_shards, npz_shapes
from rql_cli.envs.make import env_dims, make_eval_env
from rql_cli.errors import DatasetError
from rql_cli.names import NUM_TASKS, TaskName, parse_ogbench_name

if TYPE_CHECKING:
    from gymnasium import Env
    from ogbench.manipspace.envs.manipspace_env import ManipSpaceEnv

OFFICIAL_EPISODE_ROWS = 1001
OFFICIAL_TRAIN_EPISODES = {"cube-single": 1000, "cube-double": 1000, "scene": 1000, "puzzle-3x3": 1000,
                           "puzzle-4x4": 1000, "cube-triple": 3000, "puzzle-4x5": 3000,
                           "cube-quadruple": 5000, "puzzle-4x6": 5000}
FLOAT_KEYS = ("observations", "actions", "qpos", "qvel")


@dataclass
class Check:
    """One finding. ``status``: ``'ok'``, ``'note'`` (unlike the official files, still trainable) or ``'fail'``."""

    file: str
    field: str
    status: str
    found: str
    expected: str


@dataclass
class Verification:
    """Every check of one dataset, plus the sub-goal solve rates per task (``{task: {...}}``)."""

    name: str
    path: str
    checks: list[Check] = field(default_factory=list)
    solve_rates: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        """The checks that break training."""
        return [c for c in self.checks if c.status == "fail"]

    def add(self, file: Path | str, name: str, ok: bool, found: str, expected: str, *, severity: str = "fail") -> None:
        self.checks.append(Check(Path(file).name, name, "ok" if ok else severity, found, expected))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: name, path, passed, checks, solve_rates."""
        return {"name": self.name, "path": self.path, "passed": not self.failed,
                "checks": [asdict(c) for c in self.checks],
                "solve_rates": {str(k): v for k, v in self.solve_rates.items()}}


def verify_dataset(name: str, path: Path, *, all_shards: bool = False) -> Verification:
    """Check the training file (or shard folder) ``path`` of dataset ``name`` and its ``-val`` file(s).

    Headers (keys, dtypes, shapes) of every file are read; contents (values, episodes, solve rates)
    of the training file, or of the first shard and its val file unless ``all_shards``.
    """
    parsed = parse_ogbench_name(name)
    path = Path(path)
    files = list_shards(path) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"{path} holds no .npz files to verify.")
    env = make_eval_env(parsed)
    try:
        expected = _expected_shapes(env, parsed.family)
        report = Verification(name=parsed.dataset_name, path=str(path))
        total_episodes = 0
        for index, train in enumerate(files):
            val = train.with_name(train.name[: -len(".npz")] + VAL_SUFFIX)
            for file in (train, val):
                if not file.is_file():
                    report.add(file, "file", False, "missing", "a -val.npz beside each training file")
                    continue
                _check_headers(report, file, expected)
            if index == 0 or all_shards:
                for file in (train, val):
                    if file.is_file() and not any(c.file == file.name and c.field in ("keys", "archive")
                                                  and c.status == "fail" for c in report.checks):
                        episodes = _check_contents(report, file, expected)
                        if file is train:
                            total_episodes += episodes
                if not report.failed and index == 0:
                    report.solve_rates = _solve_rates(parsed, train, env)
        official = OFFICIAL_TRAIN_EPISODES.get(parsed.family)
        if official and len(files) == 1:
            report.add(files[0], "episode count", total_episodes == official, f"{total_episodes:,}",
                       f"{official:,} (official)", severity="note")
        if report.solve_rates:
            any_solved = any(r["solved_fraction"] > 0 for r in report.solve_rates.values())
            report.add(files[0], "task solve rate", any_solved,
                       "no task is ever solved" if not any_solved else "some tasks solved",
                       "each task solved in some rows (play data)", severity="note")
        return report
    finally:
        env.close()


def _expected_shapes(env: Env, family: str) -> dict[str, tuple[int, ...]]:
    base: ManipSpaceEnv = env.unwrapped
    observation_size, action_size = env_dims(env)
    shapes = {"observations": (observation_size,), "actions": (action_size,),
              "terminals": (), "qpos": (int(base._model.nq),), "qvel": (int(base._model.nv),)}
    if family.startswith(("scene", "puzzle")):
        shapes["button_states"] = (int(base._num_buttons),)
    return shapes


def _check_headers(report: Verification, file: Path, expected: dict[str, tuple[int, ...]]) -> None:
    try:
        shapes = npz_shapes(file)
    except DatasetError as error:
        report.add(file, "archive", False, str(error), "an np.savez(_compressed) archive of arrays")
        return
    missing = [k for k in expected if k not in shapes]
    report.add(file, "keys", not missing, f"missing {', '.join(missing)}" if missing else ", ".join(sorted(shapes)),
               ", ".join(sorted(expected)))
    rows = {k: shapes[k][0][0] if shapes[k][0] else 0 for k in expected if k in shapes}
    for key, tail in expected.items():
        if key not in shapes:
            continue
        shape, dtype = shapes[key]
        same_rows = shape[:1] == (rows.get("observations"),)
        report.add(file, f"{key} shape", tuple(shape[1:]) == tail and same_rows, f"{shape}",
                   f"(N, {', '.join(map(str, tail))})" if tail else "(N,)", )
        wanted = _wanted_dtype(key)
        ok = np.dtype(dtype).kind in wanted[0]
        report.add(file, f"{key} dtype", ok, np.dtype(dtype).name, wanted[1])


def _wanted_dtype(key: str) -> tuple[str, str]:
    if key in FLOAT_KEYS:
        return "f", "float32"
    if key == "terminals":
        return "bfiu", "bool (0/1)"
    return "iub", "integer"


def _check_contents(report: Verification, file: Path, expected: dict[str, tuple[int, ...]]) -> int:
    """Values, episode structure and action range of one file; returns its episode count."""
    with np.load(file) as archive:
        for key in FLOAT_KEYS:
            if key in archive.files:
                values = archive[key]
                bad = ~np.isfinite(values)
                first = int(np.argwhere(bad)[0][0]) if bad.any() else None
                found = "all finite" if first is None else f"{int(bad.sum()):,} NaN/inf values (first in row {first:,})"
                report.add(file, f"{key} finite", first is None, found, "all finite")
        actions = archive["actions"]
        low, high = float(np.nanmin(actions)), float(np.nanmax(actions))
        report.add(file, "actions range", -1.0 <= low and high <= 1.0, f"[{low:.4g}, {high:.4g}]", "within [-1, 1]")
        terminals = archive["terminals"].astype(bool)
        values = np.unique(archive["terminals"])
        report.add(file, "terminals values", bool(np.isin(values, [0, 1]).all()),
                   ", ".join(str(v) for v in values[:5]), "0 and 1")
        observations = archive["observations"]
    ends = np.flatnonzero(terminals)
    last = bool(terminals[-1])
    report.add(file, "last row terminal", last, str(last), "True (episodes end in the file)")
    lengths = np.diff(np.concatenate([[-1], ends])) if ends.size else np.array([terminals.size])
    equal = lengths.size > 0 and int(lengths.min()) == int(lengths.max())
    if equal:
        shown = f"{int(lengths[0]):,} rows each"
    else:
        odd = int(np.flatnonzero(lengths != np.median(lengths))[0])
        shown = f"{int(lengths.min()):,} to {int(lengths.max()):,} rows (episode {odd} has {int(lengths[odd]):,})"
    report.add(file, "episode length", equal and lengths[0] >= 2, shown, "equal lengths of at least 2 rows")
    if equal:
        report.add(file, "episode length (official)", int(lengths[0]) == OFFICIAL_EPISODE_ROWS, shown,
                   f"{OFFICIAL_EPISODE_ROWS:,} rows", severity="note")
    finite = observations[np.isfinite(observations).all(axis=1)]
    if finite.size:
        std = finite.std(axis=0)
        constant = int((std == 0).sum())
        report.add(file, "observation statistics", constant < observations.shape[1],
                   f"|mean| <= {np.abs(finite.mean(axis=0)).max():.3g}, std {std.min():.3g}..{std.max():.3g}, "
                   f"{constant} constant of {observations.shape[1]}", "varying observations", severity="note")
    return int(ends.size)


def _solve_rates(parsed: TaskName, train: Path, env: Env) -> dict[int, dict[str, float]]:
    """Per task: rows solving the whole task (mask 0) and the mean fraction of sub-goals solved.

    ``env`` is the single-task env of the name's own task (the caller's, kept open). It serves all five
    tasks: ogbench's relabelling reads the targets its ``reset()`` sets from the env's reward task, so
    that is switched instead of building an env per task (each builds its MuJoCo model twice: about
    a second of CPU).
    """
    from ogbench.utils import load_dataset, relabel_dataset  # ogbench takes seconds to import

    arrays = load_dataset(str(train), compact_dataset=False, add_info=True)
    base: ManipSpaceEnv = env.unwrapped
    own_task = base._reward_task_id
    subgoals = _num_subgoals(base, parsed.family)
    rates = {}
    try:
        for task in range(1, NUM_TASKS + 1):
            base._reward_task_id = task
            relabel_dataset(parsed.gym_id(task), env, arrays)
            rewards, masks = arrays["rewards"], arrays["masks"]  # reward = sub-goals solved - sub-goals
            rates[task] = {"solved_fraction": float((masks == 0).mean()),
                           "subgoals_solved": float(1.0 + rewards.mean() / subgoals)}
    finally:
        base._reward_task_id = own_task
    return rates


def _num_subgoals(env: ManipSpaceEnv, family: str) -> int:
    """Sub-goals of a manipulation task (ogbench's relabelling counts them): cubes; cubes, buttons,
    drawer and window; or buttons."""
    if family.startswith("cube"):
        return int(env._num_cubes)
    if family == "scene":
        return int(env._num_cubes) + int(env._num_buttons) + 2
    return int(env._num_buttons)
