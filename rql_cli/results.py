"""What running a policy in its env measured: one episode, progress through a run of episodes, and
an evaluation's result, as the evaluators, the training loop, the screen, metrics.json, eval.csv
and the model card all read them.

Plain dataclasses without rql imports, so that every layer (``io`` included) may use them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Episode:
    """One finished episode, whoever ran it (an evaluation, a rollout, online collection).

    Attributes:
        seed: the env seed of its reset.
        success: the final step's ``info['success']``.
        episode_return: undiscounted sum of the env's own rewards.
        length: env steps taken.
        success_reported: False where the env does not report success (``info['success_reported']``,
            envs outside OGBench); ``success`` then means nothing.
        index: its number in its run, from 0 (a rollout shows ``index + 1``; online collection counts
            on across a resume); None where the runner does not number episodes (``run_episode``).
    """

    seed: int
    success: bool
    episode_return: float
    length: int
    success_reported: bool = True
    index: int | None = None


@dataclass(frozen=True)
class EpisodeProgress:
    """Where a run of episodes stands when one of them ends: what an ``EpisodeCallback`` gets.

    Attributes:
        episode: the episode that just ended.
        done: episodes finished so far, this one included (parallel envs may finish them out of
            index order).
        total: episodes the run counts in all.
        successes: successes among the ``done`` finished episodes.
    """

    episode: Episode
    done: int
    total: int
    successes: int

    @property
    def success_rate(self) -> float:
        """Successes over finished episodes, in [0, 1]."""
        return self.successes / self.done


EpisodeCallback = Callable[[EpisodeProgress], None]
"""on_episode(progress), after each finished episode."""


@dataclass
class EvalResult:
    """The outcome of evaluating a policy on one task (``rql_cli.envs.evaluate.evaluate``), and one
    task of a metrics.json. Per-episode lists are ordered by episode index.

    ``evaluate`` fills every field but ``wall_seconds``. A result read from a metrics.json holds what
    the file recorded: None (or an empty list) where an older or hand-written file has no such field.

    Attributes:
        success_rate: fraction of episodes whose final step reported ``info['success']``, in [0, 1].
        success_ci95: Wilson 95% interval (low, high) of the success rate.
        mean_return: mean undiscounted episode return (sum of env rewards).
        return_ci95: mean ± 1.96·sd/sqrt(n) of the returns.
        episodes: number of episodes counted (exactly the number asked for).
        successes, returns, lengths, seeds: per episode; ``seeds[i] == seed + i`` reset episode i,
            ``lengths`` are env steps.
        task: the task number evaluated (1..5).
        dataset_name: dataset file stem, e.g. ``'cube-single-play-v0'``.
        env_id: ogbench singletask name, e.g. ``'cube-single-play-singletask-task2-v0'``.
        ogbench_version, success_timing: decide comparability ('pre': ogbench >= 1.2 singletask
            semantics, success judged before the action; FQL's published numbers used 'post').
        max_episode_steps: the time limit used (steps), the registered one unless overridden.
        num_envs: parallel envs used.
        wall_time_s: seconds for the whole ``evaluate`` call, env start-up included.
        startup_time_s: seconds to start the envs (worker processes, model compilation).
        env_steps: env steps taken by counted episodes (sum of ``lengths``).
        policy_calls: calls made to the policy; policy_rows: rows (chunks) it produced in total.
        versions: the package versions that decide comparability (``env_versions``).
        success_reported: whether the env reports success at all (OGBench envs do; a gymnasium
            locomotion env does not, and its success rate then means nothing).
        normalized_score, normalized_score_ci95: mean D4RL-normalised return (0 random, 100 expert)
            and its interval, for Minari datasets with reference scores; None otherwise.
        wall_seconds: seconds ``rql eval`` spent on the task, the policy's set-up included; None for
            a training run's periodic evaluation.
    """

    success_rate: float
    success_ci95: tuple[float, float] | None = None
    mean_return: float | None = None
    return_ci95: tuple[float, float] | None = None
    episodes: int | None = None
    successes: list[bool] = field(default_factory=list)
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    task: int | None = None
    dataset_name: str | None = None
    env_id: str | None = None
    ogbench_version: str | None = None
    success_timing: str | None = None
    max_episode_steps: int | None = None
    num_envs: int | None = None
    wall_time_s: float | None = None
    startup_time_s: float | None = None
    env_steps: int | None = None
    policy_calls: int | None = None
    policy_rows: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    success_reported: bool = True
    normalized_score: float | None = None
    normalized_score_ci95: tuple[float, float] | None = None
    wall_seconds: float | None = None

    @property
    def env_steps_per_s(self) -> float | None:
        """Env steps per second over the stepping loop (start-up excluded); None when not recorded."""
        if self.env_steps is None or self.wall_time_s is None or self.startup_time_s is None:
            return None
        loop_time = self.wall_time_s - self.startup_time_s
        return self.env_steps / loop_time if loop_time > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """One task of metrics.json (and of ``rql eval --json``): lists instead of tuples, Python
        scalars only, ``env_steps_per_s`` added, ``wall_seconds`` only when measured."""
        out = asdict(self)
        for name in _INTERVALS:
            if out[name] is not None:
                out[name] = list(out[name])
        wall_seconds = out.pop("wall_seconds")
        out["env_steps_per_s"] = self.env_steps_per_s
        if wall_seconds is not None:
            out["wall_seconds"] = wall_seconds
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> EvalResult:
        """The result ``to_dict`` wrote (or an older rql did). Fields the payload lacks keep their
        defaults; keys that are not fields (``env_steps_per_s``, derived) are dropped. An interval
        that is not a pair of numbers raises ValueError or TypeError."""
        names = {item.name for item in fields(cls)}
        values = {key: value for key, value in payload.items() if key in names}
        for name in _INTERVALS:
            if values.get(name) is not None:
                low, high = values[name]
                values[name] = (float(low), float(high))
        return cls(**values)


_INTERVALS = ("success_ci95", "return_ci95", "normalized_score_ci95")


def mean_over_seeds(rates: list[float]) -> tuple[float, tuple[float, float] | None]:
    """The mean of per-seed rates and its 95% interval over seeds: Student's t with n - 1 degrees of
    freedom on the seeds' own rates (the spread between seeds, not the episodes' binomial noise);
    None for one seed. The bounds are clipped to [0, 1]."""
    mean = sum(rates) / len(rates)
    if len(rates) < 2:
        return mean, None
    from scipy import stats

    spread = stats.sem(rates)
    half = float(stats.t.ppf(0.975, len(rates) - 1) * spread) if spread > 0 else 0.0
    return mean, (max(0.0, mean - half), min(1.0, mean + half))
