"""Environments outside OGBench: a Minari dataset's own env, or a plain gymnasium id (``--env``).

The agent sees what it saw in the data: observations flattened to one vector (a ``Dict`` space's
parts in the space's key order, as ``gymnasium.spaces.flatten`` does; for a Minari dataset's env in
sorted-key order, the order minari gives the dataset's space) and actions in [-1, 1] (an
env with other finite bounds is wrapped with ``RescaleAction``; the data loader maps dataset actions
the same way, ``rescale_actions``). ``info['success']`` is always present, False where the env does
not report success, and ``info['success_reported']`` says which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from rql_cli.minari_store import is_local, load
from rql_cli.names import ExternalName
from rql_cli.spaces import as_box, needs_rescale

if TYPE_CHECKING:
    from gymnasium import Env, Space, Wrapper

# gymnasium is imported inside functions: it takes a second or more to import, and OGBench runs
# never need this module's envs.


def make_external_env(
    name: ExternalName, *, render: bool = False, width: int = 256, height: int = 256,
    max_episode_steps: int | None = None,
) -> Env:
    """The evaluation env of an ``ExternalName``, adapted as the module docstring says."""
    import gymnasium

    kwargs: dict[str, Any] = {}
    if render:
        kwargs.update(render_mode="rgb_array", width=width, height=height)
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    env = _make(name, kwargs)
    if isinstance(env.observation_space, gymnasium.spaces.Dict):
        if name.source == "minari":
            # minari reads a dataset's Dict space back with its keys sorted, and the data is flattened
            # in that order; the env may declare its keys in another, so flatten by the sorted space.
            env = gymnasium.wrappers.TransformObservation(env, lambda obs: obs, _sorted_keys(env.observation_space))
        env = gymnasium.wrappers.FlattenObservation(env)
    if needs_rescale(as_box(env.action_space, f"{name.dataset_name}'s action space")):
        env = gymnasium.wrappers.RescaleAction(env, np.float64(-1.0), np.float64(1.0))
    return _success_info_wrapper()(env)


def _sorted_keys(space: Space) -> Space:
    """``space`` with the keys of every ``Dict`` in it sorted (as minari deserialises a space)."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Dict):
        return gymnasium.spaces.Dict({key: _sorted_keys(space[key]) for key in sorted(space.spaces)})
    return space


def _make(name: ExternalName, kwargs: dict[str, Any]) -> Env:
    import gymnasium

    if name.source == "minari":
        if not is_local(name.ident) and name.env_spec:  # a pulled checkpoint: its recorded env
            return _make_from_spec(name.env_spec, kwargs)
        dataset = load(name.ident)
        return _with_frame_size(lambda **extra: dataset.recover_environment(eval_env=True, **extra), kwargs)
    if name.ident not in gymnasium.registry and name.env_spec:
        return _make_from_spec(name.env_spec, kwargs)
    return _with_frame_size(lambda **extra: gymnasium.make(name.ident, **extra), kwargs)


def _with_frame_size(make: Callable[..., Env], kwargs: dict[str, Any]) -> Env:
    """``make(**kwargs)``, again without width/height for envs whose constructor does not take them."""
    try:
        return make(**kwargs)
    except TypeError:
        return make(**{k: v for k, v in kwargs.items() if k not in ("width", "height")})


def _make_from_spec(spec_json: str, kwargs: dict[str, Any]) -> Env:
    import gymnasium
    from gymnasium.envs.registration import EnvSpec

    spec = EnvSpec.from_json(spec_json)
    return _with_frame_size(lambda **extra: gymnasium.make(spec, **extra), kwargs)


def env_spec_json(name: ExternalName) -> str | None:
    """The gymnasium ``EnvSpec`` (as JSON) of the env that evaluates ``name``; None if it cannot be written."""
    import gymnasium

    try:
        if name.source == "minari":
            spec = load(name.ident).spec
            return (getattr(spec, "eval_env_spec", None) or spec.env_spec).to_json()
        return gymnasium.spec(name.ident).to_json()
    except Exception:  # a spec with callables in its kwargs cannot be JSON; the name alone still works here
        return None


def _success_info_wrapper() -> type[Wrapper]:
    import gymnasium

    class SuccessInfo(gymnasium.Wrapper):
        """Puts ``success`` (the env's ``success`` or ``is_success``, else False) and
        ``success_reported`` in every step's info."""

        def step(self, action):
            observation, reward, terminated, truncated, info = self.env.step(action)
            info = dict(info)
            reported = "success" in info or "is_success" in info
            info["success"] = bool(info.get("success", info.get("is_success", False)))
            info["success_reported"] = reported
            return observation, reward, terminated, truncated, info

    return SuccessInfo


def episode_limit(name: ExternalName) -> int | None:
    """The registered time limit (steps) of the env, None when it has none."""
    import gymnasium

    if name.env_spec:
        from gymnasium.envs.registration import EnvSpec

        return EnvSpec.from_json(name.env_spec).max_episode_steps
    if name.source == "minari":
        spec = load(name.ident).spec
        env_spec = getattr(spec, "eval_env_spec", None) or spec.env_spec
        return getattr(env_spec, "max_episode_steps", None)
    return gymnasium.spec(name.ident).max_episode_steps


def reference_scores(name: ExternalName) -> tuple[float, float] | None:
    """(random, expert) reference returns of a Minari dataset (D4RL's normalisation); None if it has
    none or is not on disk."""
    if name.source != "minari" or not is_local(name.ident):  # a pulled checkpoint without its dataset
        return None

    metadata = load(name.ident).storage.metadata
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    return None if low is None or high is None else (float(low), float(high))
