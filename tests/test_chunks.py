"""The action-chunk queue: chunks run open loop, in order, and the policy is asked only when one is used up."""

from __future__ import annotations

import numpy as np
import pytest

from rql_cli.envs.chunks import ChunkQueue

ACTION_DIM = 2


def chunk(*values: float) -> np.ndarray:
    """(h, A) chunk whose step t is (values[t], -values[t])."""
    return np.array([[v, -v] for v in values], dtype=np.float32)


def test_each_env_runs_its_chunk_open_loop_in_order():
    queue = ChunkQueue(num_envs=2, action_dim=ACTION_DIM)
    assert queue.needs() == [0, 1]
    queue.fill([0, 1], np.stack([chunk(1, 2, 3), chunk(7, 8, 9)]))
    popped = [queue.pop_actions() for _ in range(3)]
    assert all(actions.shape == (2, ACTION_DIM) and actions.dtype == np.float32 for actions in popped)
    np.testing.assert_array_equal([a[0, 0] for a in popped], [1, 2, 3])
    np.testing.assert_array_equal([a[1, 0] for a in popped], [7, 8, 9])
    np.testing.assert_array_equal(popped[1][1], [8, -8])


def test_a_new_chunk_is_needed_only_once_the_queue_is_empty():
    queue = ChunkQueue(num_envs=2, action_dim=ACTION_DIM)
    queue.fill([0, 1], np.stack([chunk(1, 2), chunk(5, 6)]))
    queue.pop_actions()
    assert queue.needs() == []
    queue.pop_actions()
    assert queue.needs() == [0, 1]
    queue.fill([1], chunk(7, 8)[None])
    assert queue.needs() == [0]


def test_inactive_envs_are_never_asked_and_get_zero_actions():
    queue = ChunkQueue(num_envs=3, action_dim=ACTION_DIM)
    active = np.array([True, False, True])
    assert queue.needs(active) == [0, 2]
    queue.fill([0, 2], np.stack([chunk(1), chunk(3)]))
    actions = queue.pop_actions(active)
    np.testing.assert_array_equal(actions, [[1, -1], [0, 0], [3, -3]])


def test_refill_asks_the_policy_once_for_exactly_the_envs_in_need():
    batches = []

    def policy(obs: np.ndarray) -> np.ndarray:
        batches.append(obs.copy())
        return np.repeat(chunk(1, 2)[None], len(obs), axis=0)

    queue = ChunkQueue(num_envs=3, action_dim=ACTION_DIM)
    observations = np.arange(9, dtype=np.float64).reshape(3, 3)
    assert queue.refill(policy, observations, active=[True, True, False]) == 2
    assert len(batches) == 1 and batches[0].dtype == np.float32
    np.testing.assert_array_equal(batches[0], observations[[0, 1]])
    queue.pop_actions([True, True, False])
    assert queue.refill(policy, observations, active=[True, True, False]) == 0  # no call: queues hold actions
    assert len(batches) == 1


def test_clear_drops_the_leftovers_of_an_ended_episode():
    queue = ChunkQueue(num_envs=2, action_dim=ACTION_DIM)
    queue.fill([0, 1], np.stack([chunk(1, 2, 3), chunk(5, 6, 7)]))
    queue.pop_actions()
    queue.clear(0)
    assert queue.needs() == [0]
    queue.fill([0], chunk(9, 10)[None])
    np.testing.assert_array_equal(queue.pop_actions()[:, 0], [9, 6])


def test_actions_without_a_chunk_axis_are_chunks_of_one():
    queue = ChunkQueue(num_envs=2, action_dim=ACTION_DIM)
    queue.fill([0, 1], np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(queue.pop_actions(), [[1, 2], [3, 4]])
    assert queue.needs() == [0, 1]


@pytest.mark.parametrize(
    "chunks",
    [
        np.zeros((2, 3, ACTION_DIM + 1)),  # wrong action size
        np.zeros((1, 3, ACTION_DIM)),  # one chunk for two envs
        np.zeros((2, 0, ACTION_DIM)),  # empty chunks
        np.zeros((2, 3, ACTION_DIM, 1)),  # an extra axis
    ],
)
def test_chunks_of_the_wrong_shape_are_refused(chunks):
    queue = ChunkQueue(num_envs=2, action_dim=ACTION_DIM)
    with pytest.raises(ValueError, match=r"\(2, h, 2\)"):
        queue.fill([0, 1], chunks)
    assert queue.needs() == [0, 1]  # nothing was queued


def test_non_finite_actions_are_refused():
    queue = ChunkQueue(num_envs=1, action_dim=ACTION_DIM)
    with pytest.raises(ValueError, match="NaN or infinite"):
        queue.fill([0], np.full((1, 2, ACTION_DIM), np.nan))


def test_popping_an_active_env_with_no_chunk_is_an_error():
    queue = ChunkQueue(num_envs=2, action_dim=ACTION_DIM)
    queue.fill([0], chunk(1)[None])
    with pytest.raises(RuntimeError, match=r"Envs \[1\]"):
        queue.pop_actions()
    np.testing.assert_array_equal(queue.pop_actions([True, False]), [[1, -1], [0, 0]])  # env 0 kept its action
