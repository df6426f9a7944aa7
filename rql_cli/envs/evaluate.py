"""Vectorised evaluation of an action-chunk policy on an OGBench single-task env.

The policy is asked for a chunk only by envs whose action queue is empty (``ChunkQueue``, shared with
``run_episode``); chunks then run open loop, one action per env step. The official evaluator computes a
chunk every step and throws it away unless the queue is empty: the same behaviour (for a stochastic
policy, the same action distribution) at a fraction of the cost.

Heavy imports (gymnasium, ogbench, mujoco, and torch through ``rql_cli.device``) happen inside
functions: every vector-env worker process imports this module to build its env.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rql_cli.envs.chunks import ChunkQueue, PolicyFn
from rql_cli.envs.external import reference_scores
from rql_cli.envs.make import env_versions, episode_limit, make_eval_env
from rql_cli.names import ExternalName, ParsedName, parse_task_name
from rql_cli.results import Episode, EpisodeCallback, EpisodeProgress, EvalResult
from rql_cli.spaces import as_box

if TYPE_CHECKING:
    from gymnasium import Env
    from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

    VectorEnv = SyncVectorEnv | AsyncVectorEnv


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Args:
        successes: number of successful episodes, 0 <= successes <= n.
        n: number of episodes, > 0.
        z: standard-normal quantile; 1.96 gives a 95% interval.

    Returns:
        (low, high), both in [0, 1]. Unlike the normal approximation it stays inside [0, 1] and is
        not degenerate at 0/n or n/n (0/10 gives (0, 0.278)).
    """
    if n <= 0:
        raise ValueError(f"A proportion needs at least one trial, got n={n}.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n={n}], got {successes}.")
    p_hat = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    center = (p_hat + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p_hat * (1 - p_hat) / n + z2 / (4 * n * n)) / denominator
    # at 0/n and n/n the bound is the observed rate exactly (rounding left 100/100 at 0.9999999999999999)
    low = 0.0 if successes == 0 else max(0.0, center - half_width)
    high = 1.0 if successes == n else min(1.0, center + half_width)
    return low, high


def mean_interval(values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Normal-approximation interval of a mean: ``mean ± z * sd / sqrt(n)`` (sample sd, ddof=1).

    One value gives the degenerate interval (value, value).
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, mean
    half_width = z * float(values.std(ddof=1)) / math.sqrt(values.size)
    return mean - half_width, mean + half_width


def _make_worker_env(task_name: str | ParsedName, task: int | None, max_episode_steps: int | None) -> Env:
    """Env factory run inside each vector-env worker (never build an env before forking).

    Keeps only ``info['success']``: ogbench's step info carries ~20 arrays (qpos, qvel, ...), which
    the vector env would otherwise batch and, in async mode, pickle through a pipe every step.
    """
    import gymnasium

    class SuccessOnlyInfo(gymnasium.Wrapper):
        def reset(self, **kwargs):
            observation, _ = self.env.reset(**kwargs)
            return observation, {}

        def step(self, action):
            observation, reward, terminated, truncated, info = self.env.step(action)
            kept = {"success": bool(info["success"])}
            if "success_reported" in info:  # envs outside OGBench (envs/external.py)
                kept["success_reported"] = bool(info["success_reported"])
            return observation, reward, terminated, truncated, kept

    env = make_eval_env(task_name, task=task, render=False, max_episode_steps=max_episode_steps)
    return SuccessOnlyInfo(env)


def _start_method() -> str:
    # fork is unsafe here: the parent may hold torch's thread pools or a GL context, neither of which
    # survives a fork. forkserver forks workers from a clean server process (fast); spawn elsewhere.
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


PARALLEL_MIN_EPISODES = 32
"""Fewest episodes for which the default runs envs in parallel. Measured on 2 cores (cube-single,
``benchmarks/eval_envs.py``): 2 worker processes cost about 1.5 s more to start than one env in this
process and save about 0.05 s per episode, so they win from about 30 episodes on."""


def default_num_envs(episodes: int) -> int:
    """Parallel envs used when ``num_envs`` is None: one per usable CPU core (affinity and cgroup
    quota), at most one per episode, and one env when too few episodes would repay the workers' start."""
    from rql_cli.device import usable_cores

    if episodes < PARALLEL_MIN_EPISODES:
        return 1
    return max(1, min(episodes, usable_cores()))


@contextmanager
def _single_policy_thread(env_count: int) -> Iterator[None]:
    """While worker processes step the envs, give this process's torch one thread.

    The policy here batches a chunk for a few envs (a tiny matmul); with a full OpenMP pool its idle
    threads spin on the cores the workers need, which made 2 envs slower than 1 on 2 cores.
    """
    torch = sys.modules.get("torch")
    if env_count == 1 or torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


MemberPolicies = Callable[[dict[int, np.ndarray]], dict[int, np.ndarray]]
"""Several policies asked at once (``evaluate_members``): ``{member: obs (n, obs_dim) float32}`` for the
members whose envs need chunks now (n >= 1) -> ``{member: chunks (n, h, A)}`` for the same members."""

MemberEpisodeCallback = Callable[[int, EpisodeProgress], None]
"""on_episode(member, progress): after each finished episode of that member."""


def evaluate(
    policy_fn: PolicyFn,
    task_name: str | ParsedName,
    task: int | None = None,
    episodes: int = 50,
    num_envs: int | None = None,
    seed: int = 0,
    on_episode: EpisodeCallback | None = None,
    max_episode_steps: int | None = None,
    check_fit: Callable[[int, int, str], None] | None = None,
    kept: KeptEnvs | None = None,
) -> EvalResult:
    """Run ``episodes`` episodes of an action-chunk policy and measure success and return.

    Args:
        policy_fn: ``obs (E, obs_dim) float32 -> chunks (E, h, A)``; called only with the rows of envs
            whose action queue is empty, batched over exactly those envs. A chunk runs open loop, one
            action per env step (clipped to the action space); leftovers are dropped when an episode
            ends. ``(E, A)`` is accepted as h = 1.
        task_name: dataset or singletask name (``'cube-single-play-singletask-task2-v0'``) or its TaskName.
        task: task number 1..5; None: the task in the name, else the family default.
        episodes: number of episodes counted, exactly.
        num_envs: parallel envs; None: ``default_num_envs(episodes)``. 1 runs in this process; more run
            in worker processes (gymnasium AsyncVectorEnv).
        seed: episode ``i`` is reset with seed ``seed + i`` whichever env runs it, so initial states
            do not depend on ``num_envs`` (a stochastic policy's own noise may).
        on_episode: called after each finished episode with its ``EpisodeProgress``.
        max_episode_steps: override the env's time limit (steps); None keeps OGBench's.
        check_fit: called as ``check_fit(obs_dim, action_dim, env_name)`` with the env's sizes before
            any reset or policy call, to refuse a policy of other sizes by raising (``evaluate_checkpoint``
            passes ``io.checkpoint.check_checkpoint_dims``: CheckpointError); None checks nothing.
        kept: run on the envs kept there from an earlier call, or build them into it (a training run's
            periodic evaluations); None builds the envs and closes them before returning.

    Returns:
        EvalResult. Success is the final step's ``info['success']``; return is the sum of rewards.
    """
    [result] = evaluate_members(
        lambda rows: {0: policy_fn(rows[0])}, [seed], task_name, task, episodes=episodes, num_envs=num_envs,
        together=True, on_episode=None if on_episode is None else lambda _member, progress: on_episode(progress),
        max_episode_steps=max_episode_steps, check_fit=check_fit, kept=kept,
    )
    return result


def evaluate_members(
    policies: MemberPolicies,
    seeds: Sequence[int],
    task_name: str | ParsedName,
    task: int | None = None,
    *,
    episodes: int = 50,
    num_envs: int | None = None,
    together: bool = False,
    on_episode: MemberEpisodeCallback | None = None,
    max_episode_steps: int | None = None,
    check_fit: Callable[[int, int, str], None] | None = None,
    kept: KeptEnvs | None = None,
) -> list[EvalResult]:
    """``evaluate`` for several policies (members: the seeds of a group), each exactly as alone.

    Member m runs its ``episodes`` episodes on its own ``num_envs`` envs, reset with seeds
    ``seeds[m] + i``, exactly as ``evaluate`` would run it alone: its policy is asked for the same rows
    at the same steps, so its flow noise is drawn alike. ``together``: every member's envs step as one
    vector env, and each step asks ``policies`` once for all members that need chunks (a stacked policy
    then acts for every seed in one batched forward pass); False (default): one member after another,
    each in its own vector env. On 2 CPU cores together was slower even with one env per core (2 seeds x
    20 episodes: 20.2 s against 15.5 s; 4 seeds: 41.2 s against 35.9 s; the worker processes' pipes
    cost more than the second core saves), so callers ask for it where acting is stacked (GPUs).

    Returns:
        One EvalResult per member, in ``seeds``' order (together: ``wall_time_s`` and ``startup_time_s``
        are the shared run's).
    """
    per_member = _checked_env_count(episodes, num_envs, max_episode_steps)
    if not seeds:
        raise ValueError("evaluate_members needs at least one member.")
    groups = [list(range(len(seeds)))] if together else [[m] for m in range(len(seeds))]
    parsed = parse_task_name(task_name)
    task_number = parsed.resolve_task(task)
    started = time.perf_counter()
    # In turn, the members share one vector env (N - 1 builds saved), as KeptEnvs says is sound.
    envs = KeptEnvs() if kept is None else kept  # one of our own lives for this call only
    vector_env = envs.get(parsed, task_number, max_episode_steps, per_member * len(groups[0]))
    failed = True
    results: list[EvalResult] = []
    try:
        if check_fit is not None:
            # The error names the env as the caller did (a TaskName: its resolved singletask name).
            shown = task_name if isinstance(task_name, str) else parsed.env_id(task_number)
            check_fit(*_vector_env_dims(vector_env), shown)
        startup_time = time.perf_counter() - started
        for members in groups:
            asked, ended = _members_view(policies, on_episode, members)
            results += _run_members(asked, [seeds[m] for m in members], vector_env, parsed, task_number, episodes,
                                    per_member, ended, max_episode_steps, startup_time)
            startup_time = 0.0  # the next members find the envs built
        failed = False
    finally:
        if failed:  # its workers may be mid-step or broken by a signal: never reuse them
            envs.drop(vector_env)
        elif kept is None:
            envs.close()
    return results


def _members_view(
    policies: MemberPolicies, on_episode: MemberEpisodeCallback | None, members: list[int],
) -> tuple[MemberPolicies, MemberEpisodeCallback]:
    """``policies`` and ``on_episode`` as a run of ``members`` alone sees them: its member i is
    ``members[i]`` of the whole group."""

    def asked(rows: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        chunks = policies({members[i]: obs for i, obs in rows.items()})
        return {i: chunks[members[i]] for i in rows}

    def ended(i: int, progress: EpisodeProgress) -> None:
        if on_episode is not None:
            on_episode(members[i], progress)

    return asked, ended


def _run_members(
    policies: MemberPolicies, seeds: list[int], vector_env: VectorEnv, parsed: ParsedName, task_number: int,
    episodes: int, per_member: int, on_episode: MemberEpisodeCallback, max_episode_steps: int | None,
    startup_time: float,
) -> list[EvalResult]:
    """Run every member of ``seeds`` on ``vector_env``, ``per_member`` envs each (see ``evaluate_members``);
    ``startup_time``: the seconds building the envs took before (0: built for earlier members)."""
    started = time.perf_counter() - startup_time
    tallies = [_EpisodeTally(episodes, seed, per_member, functools.partial(on_episode, member))
               for member, seed in enumerate(seeds)]
    first_seeds: list[int | None] = [s for tally in tallies for s in tally.seeds[:per_member]]
    observations, _ = vector_env.reset(seed=first_seeds)
    with _single_policy_thread(per_member * len(seeds)):
        _run_until_counted(vector_env, policies, observations, tallies)
    wall_time = time.perf_counter() - started
    return [
        _eval_result(tally, parsed, task_number, time_limit=max_episode_steps or episode_limit(parsed),
                     num_envs=per_member, wall_time=wall_time, startup_time=startup_time)
        for tally in tallies
    ]


def _checked_env_count(episodes: int, num_envs: int | None, max_episode_steps: int | None) -> int:
    """Refuse impossible counts; returns the number of parallel envs to run (1..episodes)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}.")
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}.")
    return default_num_envs(episodes) if num_envs is None else max(1, min(int(num_envs), episodes))


def _make_vector_env(parsed: ParsedName, task: int, max_episode_steps: int | None, env_count: int) -> VectorEnv:
    """``env_count`` copies of the task's env, stepped together, with autoreset off."""
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    factories = [functools.partial(_make_worker_env, parsed, task, max_episode_steps) for _ in range(env_count)]
    # Autoreset is DISABLED and resets are issued by hand with a mask: an env that finishes is reset
    # with the seed of the episode it takes next. gymnasium 1.x's default NEXT_STEP mode would turn
    # the step after a done into a reset step (its action ignored, its reward 0), and neither
    # autoreset mode lets us choose the next episode's seed; both would also start surplus episodes.
    # AsyncVectorEnv also builds one env in this process to read the spaces (about a second of
    # start-up); it renders nothing, so no GL context exists here to be inherited.
    if env_count == 1:
        return SyncVectorEnv(factories, autoreset_mode=AutoresetMode.DISABLED)
    return AsyncVectorEnv(factories, context=_start_method(), autoreset_mode=AutoresetMode.DISABLED)


class KeptEnvs:
    """The vector envs of one training run's evaluations, built at the first and kept for the next.

    An OGBench env takes about a second to build (a worker process's start-up on top with several envs)
    and a run evaluates every ``eval_interval`` steps. A kept env runs each episode from a reset with
    that episode's seed, so it measures what a fresh one would, as episode i > 0 of one evaluation (or
    a member after another of ``evaluate_members``) already does. An evaluation that fails drops its
    envs (terminated, never reused); ``close`` ends the rest (its owner's: ``evaluate_members`` for one
    call, ``training.session.BatchSource.close`` for a run).
    """

    def __init__(self) -> None:
        self._envs: dict[tuple[str, int, int | None, int], VectorEnv] = {}

    def get(self, parsed: ParsedName, task: int, max_episode_steps: int | None, env_count: int) -> VectorEnv:
        """The kept vector env of ``env_count`` copies of this task's env; built now if there is none."""
        key = (parsed.env_id(task), task, max_episode_steps, env_count)
        if key not in self._envs:
            self._envs[key] = _make_vector_env(parsed, task, max_episode_steps, env_count)
        return self._envs[key]

    def dims(self, task_name: ParsedName, episodes: int, num_envs: int | None) -> tuple[int, int]:
        """(observation size, action size) of the envs an evaluation of ``episodes`` on the name's own
        task would run, built now and kept for it (a run's start-up check of its dataset)."""
        count = _checked_env_count(episodes, num_envs, None)
        return _vector_env_dims(self.get(task_name, task_name.resolve_task(None), None, count))

    def in_process_env(self, task_name: ParsedName, episodes: int, num_envs: int | None) -> Env | None:
        """The env an evaluation of ``episodes`` on the name's own task steps in this process, built now
        and kept for it, to lend to other work on the same task (relabelling the run's dataset, one env
        build instead of two); None when there is no evaluation or its envs run in worker processes."""
        if episodes < 1 or _checked_env_count(episodes, num_envs, None) != 1:
            return None
        vector_env = self.get(task_name, task_name.resolve_task(None), None, 1)
        return cast("SyncVectorEnv", vector_env).envs[0]

    def drop(self, vector_env: VectorEnv) -> None:
        """Terminate ``vector_env`` and forget it."""
        self._envs = {key: env for key, env in self._envs.items() if env is not vector_env}
        _close_vector_env(vector_env, terminate=True)

    def close(self) -> None:
        """Close every kept env."""
        envs, self._envs = list(self._envs.values()), {}
        for vector_env in envs:
            _close_vector_env(vector_env, terminate=False)


def _vector_env_dims(vector_env: VectorEnv) -> tuple[int, int]:
    """(observation size, action size) of each env of ``vector_env``."""
    observation_space = as_box(vector_env.single_observation_space, "The env's observation space")
    action_space = as_box(vector_env.single_action_space, "The env's action space")
    return int(observation_space.shape[-1]), int(action_space.shape[-1])


def _close_vector_env(vector_env: VectorEnv, terminate: bool) -> None:
    """Close the envs; ``terminate`` kills worker processes instead of waiting for them."""
    from gymnasium.vector import AsyncVectorEnv

    # After a failure (policy error, Ctrl-C) workers may be mid-step: waiting on them could hang.
    if isinstance(vector_env, AsyncVectorEnv):
        vector_env.close(terminate=terminate)
    else:
        vector_env.close()


class _EpisodeTally:
    """Which env runs which episode, and each episode's outcome, for one ``evaluate`` call.

    Attributes:
        seeds: N reset seeds; episode ``i`` starts from ``seeds[i]``.
        successes: (N,) bool, the final step's ``info['success']``.
        returns: (N,) float64, summed env rewards. lengths: (N,) int64, env steps.
        slot_episode: (E,) int, the episode env ``i`` runs, or -1 once it has nothing left to run
            (it keeps stepping with zero actions, since a vector env steps all envs together, but
            nothing it does is counted).
        policy_calls, policy_rows: how often the policy was asked for chunks, and for how many rows.
    """

    def __init__(self, episodes: int, seed: int, env_count: int, on_episode: EpisodeCallback | None):
        self.seeds = [seed + index for index in range(episodes)]
        self.successes = np.zeros(episodes, dtype=bool)
        self.returns = np.zeros(episodes, dtype=np.float64)
        self.lengths = np.zeros(episodes, dtype=np.int64)
        self.slot_episode = np.arange(env_count)
        self.next_episode = env_count
        self.finished = self.solved = 0
        self.success_reported = False
        self.on_episode = on_episode
        self.policy_calls = self.policy_rows = 0

    @property
    def active(self) -> np.ndarray:
        """(E,) bool: envs running a counted episode."""
        return self.slot_episode >= 0

    def record_step(self, rewards: np.ndarray, done: np.ndarray, infos: dict[str, Any]) -> list[int]:
        """Count one vector step: rewards (E,), done (E,) bool. Returns the envs whose episode ended."""
        ended = []
        for i in np.flatnonzero(self.active):
            episode = self.slot_episode[i]
            self.returns[episode] += float(rewards[i])
            self.lengths[episode] += 1
            if done[i]:
                self.successes[episode] = bool(infos["success"][i])
                reported = infos.get("success_reported")
                reported = True if reported is None else bool(reported[i])
                self.success_reported |= reported
                self.finished += 1
                self.solved += int(self.successes[episode])
                if self.on_episode is not None:
                    self.on_episode(self._progress(int(episode), reported))
                ended.append(int(i))
        return ended

    def _progress(self, episode: int, success_reported: bool) -> EpisodeProgress:
        """The progress after ``episode`` (just counted) ended."""
        finished = Episode(
            seed=self.seeds[episode], success=bool(self.successes[episode]),
            episode_return=float(self.returns[episode]), length=int(self.lengths[episode]),
            success_reported=success_reported, index=episode,
        )
        return EpisodeProgress(finished, done=self.finished, total=len(self.seeds), successes=self.solved)

    def hand_out(self, i: int) -> int | None:
        """Give env ``i`` the next episode; returns its reset seed, or None when none is left."""
        if self.next_episode >= len(self.seeds):
            self.slot_episode[i] = -1
            return None
        self.slot_episode[i] = self.next_episode
        self.next_episode += 1
        return self.seeds[self.slot_episode[i]]


def _run_until_counted(
    vector_env: VectorEnv, policies: MemberPolicies, observations: np.ndarray, tallies: list[_EpisodeTally]
) -> None:
    """Step all envs until every member's episodes are counted.

    Member m owns envs ``m * E .. m * E + E - 1`` of ``vector_env`` (E = each tally's env count).
    observations: (M * E, obs_dim), the envs' first observations after their reset.
    """
    space = as_box(vector_env.single_action_space, "The env's action space")
    per_member = len(tallies[0].slot_episode)
    queue = ChunkQueue(per_member * len(tallies), space.shape[0])
    while True:
        active = np.concatenate([tally.active for tally in tallies])
        if not active.any():
            return
        _refill(queue, policies, observations, active, tallies)
        actions = np.clip(queue.pop_actions(active), space.low, space.high)
        observations, rewards, terminated, truncated, infos = vector_env.step(actions)
        done = np.logical_or(terminated, truncated)
        reset_seeds: list[int | None] = [None] * len(done)
        for member, tally in enumerate(tallies):
            own = slice(member * per_member, (member + 1) * per_member)
            member_infos = {key: value[own] for key, value in infos.items()}
            for i in tally.record_step(rewards[own], done[own], member_infos):
                queue.clear(own.start + i)
                reset_seeds[own.start + i] = tally.hand_out(i)
        if done.any() and any(tally.active.any() for tally in tallies):
            # Every finished env is reset, idle ones included (seed None continues their RNG):
            # with autoreset disabled a finished env must not be stepped again.
            observations, _ = vector_env.reset(seed=reset_seeds, options={"reset_mask": done.copy()})


def _refill(
    queue: ChunkQueue, policies: MemberPolicies, observations: np.ndarray, active: np.ndarray,
    tallies: list[_EpisodeTally],
) -> None:
    """Ask ``policies`` once for the chunks of every env that needs one, grouped by member."""
    needy = np.asarray(queue.needs(active), dtype=np.int64)
    if needy.size == 0:
        return
    per_member = len(tallies[0].slot_episode)
    owners = needy // per_member
    rows = {int(m): np.ascontiguousarray(observations[needy[owners == m]], dtype=np.float32)
            for m in np.unique(owners)}
    chunks = policies(rows)
    for member, member_rows in rows.items():
        queue.fill(needy[owners == member].tolist(), chunks[member])
        tallies[member].policy_calls += 1
        tallies[member].policy_rows += len(member_rows)


def _eval_result(
    tally: _EpisodeTally, parsed: ParsedName, task: int, *, time_limit: int, num_envs: int,
    wall_time: float, startup_time: float,
) -> EvalResult:  # fmt: skip
    """The EvalResult of a finished tally; times in seconds."""
    versions = env_versions(parsed)
    episodes = len(tally.seeds)
    normalized = normalized_ci = None
    if isinstance(parsed, ExternalName):
        reference = reference_scores(parsed)
        if reference is not None:
            scores = 100.0 * (tally.returns - reference[0]) / (reference[1] - reference[0])
            normalized, normalized_ci = float(scores.mean()), mean_interval(scores)
    return EvalResult(
        success_rate=float(tally.successes.mean()),
        success_ci95=wilson_interval(int(tally.successes.sum()), episodes),
        mean_return=float(tally.returns.mean()),
        return_ci95=mean_interval(tally.returns),
        episodes=episodes,
        successes=[bool(s) for s in tally.successes],
        returns=[float(r) for r in tally.returns],
        lengths=[int(n) for n in tally.lengths],
        seeds=list(tally.seeds),
        task=task,
        dataset_name=parsed.dataset_name,
        env_id=parsed.env_id(task),
        ogbench_version=versions["ogbench"],
        success_timing=versions["success_timing"],
        max_episode_steps=int(time_limit),
        num_envs=num_envs,
        wall_time_s=wall_time,
        startup_time_s=startup_time,
        env_steps=int(tally.lengths.sum()),
        policy_calls=tally.policy_calls,
        policy_rows=tally.policy_rows,
        versions=versions,
        success_reported=tally.success_reported,
        normalized_score=normalized,
        normalized_score_ci95=normalized_ci,
    )


StepCallback = Callable[[int, dict[str, Any], bool], None]
"""on_step(step, info, done): step 0 with the reset info, then step t >= 1 with the info of env step
t; ``done`` is True on the episode's last step."""


def run_episode(
    env: Env, policy_fn: PolicyFn, seed: int, on_step: StepCallback | None = None
) -> Episode:
    """One episode of an action-chunk policy in one env, in this process, by ``evaluate``'s rules.

    The env is reset with ``seed``; a chunk is asked for (``policy_fn`` on a batch of one) only when
    the last one is used up, then runs open loop, one action per env step, clipped to the action
    space. With the same ``policy_fn`` noise, episodes match ``evaluate(..., num_envs=1)``'s.

    Args:
        env: a gymnasium env from ``make_eval_env`` (time-limited, ``info['success']`` each step).
        policy_fn: ``obs (1, obs_dim) float32 -> chunks (1, h, A)``.
        seed: env seed of the reset.
        on_step: called after the reset and after every env step, while the env shows that state
            (a renderer draws the frame here).

    Returns:
        The Episode (``index`` None: the caller numbers it); the env is left at its last state, open.
    """
    action_space = as_box(env.action_space, "The env's action space")
    low, high = action_space.low, action_space.high
    queue = ChunkQueue(1, action_space.shape[0])
    observation, info = env.reset(seed=seed)
    if on_step is not None:
        on_step(0, info, False)
    length = 0
    episode_return = 0.0
    while True:
        queue.refill(policy_fn, np.asarray(observation)[None])
        action = np.clip(queue.pop_actions()[0], low, high)
        observation, reward, terminated, truncated, info = env.step(action)
        episode_return += float(reward)
        length += 1
        done = bool(terminated or truncated)
        if on_step is not None:
            on_step(length, info, done)
        if done:
            return Episode(
                seed=seed, success=bool(info["success"]), episode_return=episode_return, length=length,
                success_reported=bool(info.get("success_reported", True)),
            )
