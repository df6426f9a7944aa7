"""The one place that turns a dataset name into an OGBench evaluation environment.

Names follow OGBench: ``{env}-{dataset type}[-singletask[-task{N}]]-v0``, e.g. ``cube-single-play-v0``,
``cube-single-play-singletask-v0`` or ``cube-double-play-singletask-task3-v0``. The dataset file behind
a name drops ``singletask`` and ``taskN`` (``cube-double-play-v0.npz``); the gymnasium id behind it
drops the dataset type (``cube-double-singletask-task3-v0``).

Heavy imports (ogbench, gymnasium, mujoco) happen inside functions, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import warnings
from dataclasses import dataclass

from rql_cli.errors import RQLError, UnknownNameError, closest_names

# Env family -> (dataset types OGBench publishes for it, default singletask task). The defaults are
# the ones ogbench itself substitutes for reward_task_id=0 (cube_env, scene_env, puzzle_env, maze.py).
# Pixel-observation ('visual-') variants are left out on purpose: RQL here is state-based.
_MANIPULATION = ("play", "noisy")
ENV_FAMILIES: dict[str, tuple[tuple[str, ...], int]] = {
    "cube-single": (_MANIPULATION, 2),
    "cube-double": (_MANIPULATION, 2),
    "cube-triple": (_MANIPULATION, 2),
    "cube-quadruple": (_MANIPULATION, 2),
    "scene": (_MANIPULATION, 2),
    "puzzle-3x3": (_MANIPULATION, 4),
    "puzzle-4x4": (_MANIPULATION, 4),
    "puzzle-4x5": (_MANIPULATION, 2),
    "puzzle-4x6": (_MANIPULATION, 2),
    "pointmaze-medium": (("navigate", "stitch"), 1),
    "pointmaze-large": (("navigate", "stitch"), 1),
    "pointmaze-giant": (("navigate", "stitch"), 1),
    "pointmaze-teleport": (("navigate", "stitch"), 1),
    "antmaze-medium": (("navigate", "stitch", "explore"), 1),
    "antmaze-large": (("navigate", "stitch", "explore"), 1),
    "antmaze-giant": (("navigate", "stitch"), 1),
    "antmaze-teleport": (("navigate", "stitch", "explore"), 1),
    "humanoidmaze-medium": (("navigate", "stitch"), 1),
    "humanoidmaze-large": (("navigate", "stitch"), 1),
    "humanoidmaze-giant": (("navigate", "stitch"), 1),
    "antsoccer-arena": (("navigate", "stitch"), 4),
    "antsoccer-medium": (("navigate", "stitch"), 4),
}
DATASET_TYPES = ("play", "noisy", "navigate", "stitch", "explore")
NUM_TASKS = 5  # every OGBench singletask env has task1..task5

# Values of MUJOCO_GL that mujoco's own import accepts on Linux; anything else makes `import mujoco`
# raise, deep inside gymnasium.make, before any env exists.
_VALID_MUJOCO_GL = (
    "", "glfw", "egl", "osmesa", "glx",
    "enable", "enabled", "on", "true", "1",
    "disable", "disabled", "off", "false", "0",
)  # fmt: skip

_NAME_RE = re.compile(r"^(?P<stem>.+?)(?:-singletask(?:-task(?P<task>\d+))?)?-(?P<version>v\d+)$")


def known_dataset_names() -> list[str]:
    """Every dataset name ``parse_task_name`` accepts, without ``singletask``/``taskN`` (sorted)."""
    return sorted(f"{family}-{kind}-v0" for family, (kinds, _) in ENV_FAMILIES.items() for kind in kinds)


@dataclass(frozen=True)
class TaskName:
    """A parsed OGBench single-task name.

    Attributes:
        family: env family without the dataset type, e.g. ``'cube-single'``.
        dataset_type: ``'play'``, ``'noisy'``, ``'navigate'``, ``'stitch'`` or ``'explore'``.
        version: the trailing version token, e.g. ``'v0'``.
        task: the task number written in the name (1..5), or None when the name gives none.
    """

    family: str
    dataset_type: str
    version: str = "v0"
    task: int | None = None

    @property
    def dataset_name(self) -> str:
        """The dataset file stem, e.g. ``'cube-single-play-v0'`` (file ``cube-single-play-v0.npz``)."""
        return f"{self.family}-{self.dataset_type}-{self.version}"

    @property
    def default_task(self) -> int:
        """The task ogbench uses when a singletask name has no ``-taskN`` (cube, scene: 2; ...)."""
        return ENV_FAMILIES[self.family][1]

    def resolve_task(self, task: int | None = None) -> int:
        """The concrete task number: ``task`` if given, else the name's own, else the family default."""
        chosen = task if task is not None else self.task if self.task is not None else self.default_task
        if not isinstance(chosen, int) or isinstance(chosen, bool) or not 1 <= chosen <= NUM_TASKS:
            raise RQLError(
                f"Task {chosen!r} does not exist for {self.dataset_name}: OGBench single-task envs have "
                f"tasks 1 to {NUM_TASKS} (default {self.default_task})."
            )
        return chosen

    def _task_suffix(self, task: int | None) -> str:
        if task is None and self.task is None:
            return ""
        return f"-task{self.resolve_task(task)}"

    def env_id(self, task: int | None = None) -> str:
        """The singletask name ogbench's loader takes, e.g. ``'cube-single-play-singletask-task3-v0'``.

        ``task=None`` means the task written in the name, or, if the name has none, the default-task
        name without ``-taskN`` (``'cube-single-play-singletask-v0'``), which ogbench maps to
        ``default_task``.
        """
        return f"{self.family}-{self.dataset_type}-singletask{self._task_suffix(task)}-{self.version}"

    def gym_id(self, task: int | None = None) -> str:
        """The registered gymnasium id behind ``env_id``, e.g. ``'cube-single-singletask-task3-v0'``."""
        return f"{self.family}-singletask{self._task_suffix(task)}-{self.version}"


def parse_task_name(name: str) -> TaskName:
    """Parse a dataset or singletask name; raise ``UnknownNameError`` with suggestions if unknown.

    Accepts ``cube-single-play-v0``, ``cube-single-play-singletask-v0`` and
    ``cube-single-play-singletask-task3-v0`` (and the same shapes for every family in ``ENV_FAMILIES``).
    """
    match = _NAME_RE.match(name.strip())
    family = kind = None
    if match:
        family, _, kind = match["stem"].rpartition("-")
    known = (
        match is not None
        and family in ENV_FAMILIES
        and kind in ENV_FAMILIES[family][0]
        and match["version"] == "v0"  # OGBench has published only v0 so far
    )
    if not known:
        valid = known_dataset_names()
        # Compare like with like: strip singletask/taskN so 'cube-singel-play-singletask-task2-v0'
        # is matched against dataset names, not against every task variant.
        probe = re.sub(r"-singletask(-task\d+)?", "", name.strip())
        suggestions = closest_names(probe, valid) or closest_names(name, valid)
        hint = f" Did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        raise UnknownNameError(
            f"Unknown OGBench dataset or task name {name!r}.{hint} Names look like "
            "'cube-single-play-v0' or 'cube-single-play-singletask-task2-v0'; run `rql list` to see them."
        )
    task = int(match["task"]) if match["task"] is not None else None
    parsed = TaskName(family=family, dataset_type=kind, version=match["version"], task=task)
    if task is not None:
        parsed.resolve_task()  # validates 1..5 with a friendly message
    return parsed


def _check_mujoco_gl(render: bool) -> None:
    """Choose the GL backend before mujoco is first imported, and refuse a value mujoco rejects.

    Without rendering nothing uses GL; mujoco still reads MUJOCO_GL at import and raises on an
    unknown value, so an invalid setting is reported here with a fix rather than deep in gymnasium.
    """
    if render and "MUJOCO_GL" not in os.environ and "mujoco" not in sys.modules:
        # Headless machines have no display for glfw (mujoco's default); EGL works there. mujoco
        # picks its backend once, at its first import, so setting it later would change nothing
        # (and would make the error in _check_rendering name the wrong backend).
        os.environ["MUJOCO_GL"] = "egl"
    value = os.environ.get("MUJOCO_GL", "")
    if value.lower().strip() not in _VALID_MUJOCO_GL:
        raise RQLError(
            f"MUJOCO_GL={value!r} is not a backend mujoco knows. Unset it (no rendering needs no GL), or "
            "set MUJOCO_GL=egl for headless rendering (osmesa needs `apt-get install libosmesa6`)."
        )


def make_eval_env(
    dataset_name: str,
    task: int | None = None,
    render: bool = False,
    width: int = 256,
    height: int = 256,
    max_episode_steps: int | None = None,
):
    """Build the evaluation env for a dataset or singletask name.

    Args:
        dataset_name: e.g. ``'cube-single-play-v0'`` or ``'cube-single-play-singletask-task3-v0'``.
        task: task number 1..5; None means the task in the name, else the family's default task.
        render: prepare for ``env.render()`` (rgb frames, ``(height, width, 3)`` uint8). Sets
            ``MUJOCO_GL=egl`` if the user has not set it. Without it no GL is touched.
        width, height: rendered frame size in pixels (only used with ``render``).
        max_episode_steps: override the registered time limit (steps); None keeps OGBench's
            (cube-single 200, cube-double 500, scene 750, mazes 1000, ...).

    Returns:
        A gymnasium env (TimeLimit-wrapped) with observations ``(obs_dim,)`` float64 and actions
        ``(A,)`` float32 in [-1, 1]; ``info['success']`` on every step.
    """
    parsed = parse_task_name(dataset_name)
    resolved_env_id = parsed.env_id(task)
    _check_mujoco_gl(render)

    import ogbench  # registers the ids with gymnasium

    env_kwargs: dict = {}
    if render:
        env_kwargs.update(width=width, height=height)
    if max_episode_steps is not None:
        env_kwargs["max_episode_steps"] = int(max_episode_steps)
    with _ogbench_noise_silenced():
        env = _quiet_reset_wrapper()(ogbench.make_env_and_datasets(resolved_env_id, env_only=True, **env_kwargs))
        # ogbench's manipulation envs rebuild both spaces on every access (the observation space
        # even computes an observation); fix them once on the outermost wrapper.
        env.action_space = env.action_space
        env.observation_space = env.observation_space
    if render:
        _check_rendering(env)
    return env


@contextlib.contextmanager
def _ogbench_noise_silenced():
    """Silence two warnings that say nothing actionable to our users.

    ogbench builds its action Box from float64 bounds, which gymnasium casts to float32 with a
    warning, and rebuilds that Box on every access, including inside every reset (its "settling"
    steps sample from it). The glfw backend, mujoco's default, warns about the missing display on
    headless machines even when nothing renders.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*precision lowered by casting to float32.*")
        warnings.filterwarnings("ignore", message=r".*DISPLAY environment variable is missing.*")
        yield


@functools.cache
def _quiet_reset_wrapper():
    """A gymnasium wrapper class whose reset runs inside ``_ogbench_noise_silenced``."""
    import gymnasium

    class QuietReset(gymnasium.Wrapper):
        def reset(self, **kwargs):
            with _ogbench_noise_silenced():
                return self.env.reset(**kwargs)

    return QuietReset


def _check_rendering(env) -> None:
    """Render one frame now, so a broken GL setup fails here with a fix, not mid-rollout."""
    try:
        env.reset(seed=0)
        env.unwrapped.render()
    except Exception as error:  # GL failures surface as many different types
        env.close()
        backend = os.environ.get("MUJOCO_GL")
        backend_text = f"MUJOCO_GL={backend!r}" if backend else "MUJOCO_GL unset (glfw, which needs a display)"
        raise RQLError(
            f"Rendering failed with {backend_text}: {error}. Headless machines need MUJOCO_GL=egl (or "
            "osmesa with `apt-get install libosmesa6`), set before mujoco is first imported: start the "
            "command with it, e.g. `MUJOCO_GL=egl rql rollout ...`."
        ) from error


def success_timing(dataset_name: str) -> str:
    """When the singletask env evaluates success: ``'pre'`` (before the action) or ``'post'``.

    Read from the gymnasium registration ogbench makes (``success_timing`` kwarg, ogbench >= 1.2);
    older ogbench has no such kwarg and always evaluated after the action (``'post'``).
    """
    import gymnasium
    import ogbench  # noqa: F401  (registers the ids)

    parsed = parse_task_name(dataset_name)
    return gymnasium.spec(parsed.gym_id()).kwargs.get("success_timing", "post")


def episode_limit(dataset_name: str) -> int:
    """The registered time limit of the dataset's singletask env, in env steps (cube-single: 200)."""
    import gymnasium
    import ogbench  # noqa: F401  (registers the ids)

    return int(gymnasium.spec(parse_task_name(dataset_name).gym_id()).max_episode_steps)


def env_versions(dataset_name: str | None = None) -> dict:
    """Versions that decide evaluation numbers, for checkpoints and evaluation reports.

    Returns:
        ``{'ogbench': str, 'gymnasium': str, 'mujoco': str, 'success_timing': str}``. The timing is
        the given dataset's; without a name, the timing shared by every family (``'mixed'`` if they
        differ).
    """
    from importlib.metadata import PackageNotFoundError, version

    def package_version(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    if dataset_name is not None:
        timing = success_timing(dataset_name)
    else:
        timings = {success_timing(f"{family}-{kinds[0]}-v0") for family, (kinds, _) in ENV_FAMILIES.items()}
        timing = timings.pop() if len(timings) == 1 else "mixed"
    return {
        "ogbench": package_version("ogbench"),
        "gymnasium": package_version("gymnasium"),
        "mujoco": package_version("mujoco"),
        "success_timing": timing,
    }
