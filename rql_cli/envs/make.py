"""The one place that builds an environment: for evaluation, for relabelling a dataset's rewards,
and for collecting a dataset with OGBench's scripted oracles.

Name parsing lives in ``rql_cli.names`` (shared with the data layer); import names from there. The
data layer imports this module for its envs; nothing here imports ``rql_cli.data``.

Heavy imports (ogbench, gymnasium, mujoco) happen inside functions, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from rql_cli.envs.external import episode_limit as external_limit
from rql_cli.envs.external import make_external_env
from rql_cli.errors import RQLError
from rql_cli.names import ENV_FAMILIES, ExternalName, ParsedName, parse_task_name
from rql_cli.spaces import as_box

if TYPE_CHECKING:
    from gymnasium import Env, Wrapper

# Values of MUJOCO_GL that mujoco's own import accepts on Linux; anything else makes `import mujoco`
# raise, deep inside gymnasium.make, before any env exists.
_VALID_MUJOCO_GL = (
    "", "glfw", "egl", "osmesa", "glx",
    "enable", "enabled", "on", "true", "1",
    "disable", "disabled", "off", "false", "0",
)  # fmt: skip


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
    task_name: str | ParsedName,
    task: int | None = None,
    render: bool = False,
    width: int = 256,
    height: int = 256,
    max_episode_steps: int | None = None,
    before_first_frame: Callable[[Env], object] | None = None,
) -> Env:
    """Build the evaluation env for a dataset or singletask name.

    Args:
        task_name: e.g. ``'cube-single-play-v0'`` or ``'cube-single-play-singletask-task3-v0'``, or
            the ``TaskName`` parsed from one.
        task: task number 1..5; None means the task in the name, else the family's default task.
        render: prepare for ``env.render()`` (rgb frames, ``(height, width, 3)`` uint8). Sets
            ``MUJOCO_GL=egl`` if the user has not set it. Without it no GL is touched.
        width, height: rendered frame size in pixels (only used with ``render``).
        max_episode_steps: override the registered time limit (steps); None keeps OGBench's
            (cube-single 200, cube-double 500, scene 750, mazes 1000, ...).
        before_first_frame: with ``render``, called with the env after its first reset and before
            its first frame, when settings the GL context reads once at creation (shadow map size,
            multisampling: ``rql_cli.envs.render``) still take effect.

    Returns:
        A gymnasium env (TimeLimit-wrapped) with observations ``(obs_dim,)`` float64 and actions
        ``(A,)`` float32 in [-1, 1]; ``info['success']`` on every step. The same env relabels a
        dataset's rewards for its task (``rql_cli.data.sources``, ``rql_cli.data.verify``).
    """
    parsed = parse_task_name(task_name)
    resolved_env_id = parsed.env_id(task)
    _check_mujoco_gl(render)
    if isinstance(parsed, ExternalName):
        env = make_external_env(parsed, render=render, width=width, height=height, max_episode_steps=max_episode_steps)
        if render:
            _check_rendering(env, before_first_frame)
        return env

    import ogbench  # registers the ids with gymnasium

    env_kwargs: dict[str, Any] = {}
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
        _check_rendering(env, before_first_frame)
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
def _quiet_reset_wrapper() -> type[Wrapper]:
    """A gymnasium wrapper class whose reset runs inside ``_ogbench_noise_silenced``."""
    import gymnasium

    class QuietReset(gymnasium.Wrapper):
        def reset(self, **kwargs):
            with _ogbench_noise_silenced():
                return self.env.reset(**kwargs)

    return QuietReset


def _check_rendering(env: Env, before_first_frame: Callable[[Env], object] | None = None) -> None:
    """Render one frame now, so a broken GL setup fails here with a fix, not mid-rollout."""
    try:
        env.reset(seed=0)
        if before_first_frame is not None:
            before_first_frame(env)
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


def env_dims(env: Env) -> tuple[int, int]:
    """(observation size, action size) of an env the agent acts in: the last dimension of each Box."""
    observation_space = as_box(env.observation_space, "The env's observation space")
    action_space = as_box(env.action_space, "The env's action space")
    return int(observation_space.shape[-1]), int(action_space.shape[-1])


def success_timing(task_name: str | ParsedName) -> str:
    """When the singletask env of a dataset or task name evaluates success: ``'pre'`` (before the
    action) or ``'post'``.

    Read from the gymnasium registration ogbench makes (``success_timing`` kwarg, ogbench >= 1.2);
    older ogbench has no such kwarg and always evaluated after the action (``'post'``).
    """
    import gymnasium

    parsed = parse_task_name(task_name)
    if isinstance(parsed, ExternalName):
        return "env"  # whatever the env's own info['success'] means (after the action, in gymnasium envs)
    import ogbench  # noqa: F401  (registers the ids)

    return gymnasium.spec(parsed.gym_id()).kwargs.get("success_timing", "post")


def episode_limit(task_name: str | ParsedName) -> int:
    """The registered time limit of a dataset or task name's singletask env, in env steps
    (cube-single: 200)."""
    import gymnasium

    parsed = parse_task_name(task_name)
    if isinstance(parsed, ExternalName):
        return int(external_limit(parsed) or 0)
    import ogbench  # noqa: F401  (registers the ids)

    limit = gymnasium.spec(parsed.gym_id()).max_episode_steps
    if limit is None:
        raise RQLError(f"{parsed.gym_id()} is registered without a time limit; evaluation needs one.")
    return int(limit)


def env_versions(task_name: str | ParsedName | None = None) -> dict[str, str]:
    """Versions that decide evaluation numbers, for checkpoints and evaluation reports.

    Returns:
        ``{'ogbench': str, 'gymnasium': str, 'mujoco': str, 'success_timing': str}``. The timing is
        the given dataset or task name's; without a name, the timing shared by every family
        (``'mixed'`` if they differ).
    """

    def package_version(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    if task_name is not None:
        timing = success_timing(task_name)
    else:
        timings = {success_timing(f"{family}-{kinds[0]}-v0") for family, (kinds, _) in ENV_FAMILIES.items()}
        timing = timings.pop() if len(timings) == 1 else "mixed"
    versions = {
        "ogbench": package_version("ogbench"),
        "gymnasium": package_version("gymnasium"),
        "mujoco": package_version("mujoco"),
        "success_timing": timing,
    }
    if task_name is not None and isinstance(parse_task_name(task_name), ExternalName):
        versions["minari"] = package_version("minari")
    return versions


def make_collection_env(env_id: str, episode_length: int) -> Env:
    """A manipulation env in ogbench's data-collection mode, for the scripted oracles that make a dataset.

    Args:
        env_id: the base gymnasium id, without dataset type or task: ``'cube-double-v0'``.
        episode_length: the time limit in env steps.

    Returns:
        The env, which never ends an episode at a goal: ``env.unwrapped.set_new_target`` draws the next
        target, and ``info['privileged/target_task']`` says which oracle should act.
    """
    import gymnasium

    _check_mujoco_gl(render=False)
    with warnings.catch_warnings():
        # Making the env imports dm_control's GL backends (glfw warns without a display) and gymnasium
        # warns about float64 bounds; neither matters when nothing is rendered.
        warnings.simplefilter("ignore")
        import ogbench  # noqa: F401  (registers the ids)

        return gymnasium.make(env_id, terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_length)


def make_registered_env(name: ExternalName) -> Env:
    """The gymnasium env of a ``gym:ENV`` name exactly as registered, without the adaptations the agent
    sees (``make_eval_env``): its action space is the one a plain dataset file stores actions in."""
    import gymnasium

    return gymnasium.make(name.ident)
