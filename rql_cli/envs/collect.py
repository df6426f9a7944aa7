"""Online data collection: one env stepped by an action-chunk policy, one transition at a time.

Chunks run open loop through the same ``ChunkQueue`` the evaluators use; every env step is returned
as its own transition (the observation before the step, the action taken, the reward, whether the
episode ended and whether it terminated). Episode k is reset with env seed ``seed + k``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rql_cli.envs.chunks import ChunkQueue, PolicyFn
from rql_cli.envs.make import make_eval_env
from rql_cli.names import ParsedName
from rql_cli.results import Episode
from rql_cli.spaces import as_box


class OnlineCollector:
    """Steps one env episode after episode; ``step`` returns one transition per env step.

    Args:
        task_name: the singletask env (name or TaskName); ``task`` as in ``make_eval_env``.
        seed: episode k is reset with env seed ``seed + k``.
        first_episode: index of the first episode (a resumed run continues its count).
        action_clip: executed and returned actions are clipped to +-action_clip (so that what is
            stored is exactly what ran).
        max_episode_steps: override the env's time limit (steps); None keeps OGBench's.
    """

    def __init__(
        self, task_name: str | ParsedName, task: int | None, seed: int, first_episode: int = 0,
        action_clip: float = 1.0, max_episode_steps: int | None = None,
    ):
        self.env = make_eval_env(task_name, task, max_episode_steps=max_episode_steps)
        space = as_box(self.env.action_space, "The env's action space")
        self.low = np.maximum(space.low, -action_clip).astype(np.float32)
        self.high = np.minimum(space.high, action_clip).astype(np.float32)
        self.queue = ChunkQueue(1, int(space.shape[0]))
        self.seed, self.episode = seed, first_episode
        self._start_episode()

    def _start_episode(self) -> None:
        self.observation, _ = self.env.reset(seed=self.seed + self.episode)
        self.queue.clear(0)
        self.episode_return, self.length = 0.0, 0

    def step(self, policy_fn: PolicyFn) -> tuple[dict[str, Any], Episode | None]:
        """One env step; returns the transition and, when the step ended the episode, its outcome.

        The transition holds ``observations`` (obs_dim,), ``actions`` (A,), ``rewards`` (the env's
        reward), ``masks`` (1 - terminated), ``terminals`` (1 when the episode ended, by termination
        or time limit) and ``next_observations``. After an episode ends the next one is reset.
        """
        self.queue.refill(policy_fn, np.asarray(self.observation, dtype=np.float32)[None])
        action = np.clip(self.queue.pop_actions()[0], self.low, self.high)
        next_observation, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        transition = dict(
            observations=np.asarray(self.observation, dtype=np.float32), actions=action,
            rewards=float(reward), masks=0.0 if terminated else 1.0, terminals=1.0 if done else 0.0,
            next_observations=np.asarray(next_observation, dtype=np.float32),
        )
        self.episode_return += float(reward)
        self.length += 1
        self.observation = next_observation
        if not done:
            return transition, None
        finished = Episode(
            seed=self.seed + self.episode, success=bool(info["success"]), episode_return=self.episode_return,
            length=self.length, success_reported=bool(info.get("success_reported", True)), index=self.episode,
        )
        self.episode += 1
        self._start_episode()
        return transition, finished

    def close(self) -> None:
        """Close the env."""
        self.env.close()
