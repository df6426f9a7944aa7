"""Open-loop execution of action chunks: the one queue both evaluators share.

A policy outputs a chunk of ``h`` actions per observation. Each env runs its chunk open loop, one
action per env step, and the policy is asked again only when that env's chunk is used up. ``evaluate``
(many envs) and ``run_episode`` (one env) both drive a ``ChunkQueue`` the same way, so they call the
policy at the same steps and draw the same flow noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

PolicyFn = Callable[[np.ndarray], np.ndarray]
"""obs: (E, obs_dim) float32 -> action chunks: (E, h, A), one chunk per row, actions in [-1, 1]."""


class ChunkQueue:
    """The unused rest of each env's current action chunk.

    Args:
        num_envs: E, the number of envs whose chunks are queued.
        action_dim: A, the size of one action.
    """

    def __init__(self, num_envs: int, action_dim: int):
        if num_envs < 1 or action_dim < 1:
            raise ValueError(f"A chunk queue needs num_envs and action_dim >= 1, got {num_envs} and {action_dim}.")
        self.num_envs = int(num_envs)
        self.action_dim = int(action_dim)
        self._chunks: list[np.ndarray | None] = [None] * self.num_envs
        self._positions = [0] * self.num_envs

    def needs(self, active: Sequence[bool] | np.ndarray | None = None) -> list[int]:
        """Indices of the envs that need a new chunk: active ones with an empty queue, ascending.

        Args:
            active: (E,) bool, envs still running an episode; None means all of them.
        """
        active = self._active(active)
        return [i for i in range(self.num_envs) if active[i] and self._chunks[i] is None]

    def fill(self, indices: Sequence[int], chunks: np.ndarray) -> None:
        """Queue ``chunks[row]`` for env ``indices[row]``, replacing whatever that env had left.

        Args:
            indices: n env indices, as ``needs`` returns them.
            chunks: (n, h, A) actions, h >= 1, finite; (n, A) is taken as h = 1. Stored as float32.
        """
        indices = list(indices)
        rows = len(indices)
        chunks = np.asarray(chunks, dtype=np.float32)
        if chunks.ndim == 2:
            chunks = chunks[:, None, :]
        if chunks.ndim != 3 or chunks.shape[0] != rows or chunks.shape[1] < 1 or chunks.shape[2] != self.action_dim:
            raise ValueError(
                f"policy_fn must return action chunks of shape ({rows}, h, {self.action_dim}) for {rows} "
                f"observations, got {tuple(chunks.shape)}."
            )
        if not np.isfinite(chunks).all():
            raise ValueError("policy_fn returned NaN or infinite actions.")
        for row, i in enumerate(indices):
            self._chunks[i], self._positions[i] = chunks[row], 0

    def refill(
        self, policy_fn: PolicyFn, observations: np.ndarray, active: Sequence[bool] | np.ndarray | None = None
    ) -> int:
        """Ask ``policy_fn`` once, batched, for the chunks of every env that ``needs`` one.

        Args:
            policy_fn: ``(n, obs_dim) float32 -> (n, h, A)`` chunks.
            observations: (E, obs_dim), every env's current observation; only the needy rows are passed.
            active: (E,) bool, envs still running an episode; None means all of them.

        Returns:
            The number of rows the policy was asked for; 0 means it was not called.
        """
        needy = self.needs(active)
        if needy:
            rows = np.ascontiguousarray(np.asarray(observations)[needy], dtype=np.float32)
            self.fill(needy, policy_fn(rows))
        return len(needy)

    def pop_actions(self, active: Sequence[bool] | np.ndarray | None = None) -> np.ndarray:
        """Take the next queued action of every active env.

        Args:
            active: (E,) bool, envs still running an episode; None means all of them. Every active env
                must have a queued action (``fill`` it first).

        Returns:
            (E, A) float32: each active env's next action, zeros for the inactive ones. An env whose
            chunk is now used up ``needs`` a new one.
        """
        active = self._active(active)
        empty = self.needs(active)
        if empty:
            raise RuntimeError(f"Envs {empty} have no queued action; fill their chunks before popping.")
        actions = np.zeros((self.num_envs, self.action_dim), dtype=np.float32)
        for i in np.flatnonzero(active):
            chunk = self._chunks[i]
            assert chunk is not None  # no active env is empty: checked above
            actions[i] = chunk[self._positions[i]]
            self._positions[i] += 1
            if self._positions[i] == len(chunk):
                self._chunks[i] = None
        return actions

    def clear(self, index: int) -> None:
        """Drop env ``index``'s leftover actions: its episode ended, and a new one never inherits them."""
        self._chunks[index], self._positions[index] = None, 0

    def _active(self, active: Sequence[bool] | np.ndarray | None) -> np.ndarray:
        if active is None:
            return np.ones(self.num_envs, dtype=bool)
        active = np.asarray(active, dtype=bool)
        if active.shape != (self.num_envs,):
            raise ValueError(f"active must have shape ({self.num_envs},), got {active.shape}.")
        return active
