"""Evaluating a loaded checkpoint on one or more tasks of its environment (``rql eval``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rql_cli.config import RunConfig
from rql_cli.core.rql import RQLAgent
from rql_cli.device import make_generator
from rql_cli.envs import policy  # through the module: a test replaces chunk_policy to watch it
from rql_cli.envs.evaluate import KeptEnvs, evaluate, evaluate_members
from rql_cli.io.checkpoint_meta import check_checkpoint_dims
from rql_cli.io.group_record import read_group_record, seed_dir
from rql_cli.io.metrics import EvaluationReport
from rql_cli.io.resolve import LoadedCheckpoint, load_checkpoint
from rql_cli.names import ParsedName, parse_task_name
from rql_cli.results import EpisodeCallback, EpisodeProgress, EvalResult, mean_over_seeds

TaskCallback = Callable[[int], None]
"""on_task_start(task number 1..5), before each task's episodes."""


def evaluate_checkpoint(
    loaded: LoadedCheckpoint,
    *,
    tasks: list[int | None],
    episodes: int = 50,
    seed: int = 0,
    num_envs: int | None = None,
    task_name: str | None = None,
    on_task_start: TaskCallback | None = None,
    on_episode: EpisodeCallback | None = None,
) -> EvaluationReport:
    """Evaluate the EMA policy of a loaded checkpoint on each task in ``tasks`` (None = its own).

    ``task_name`` evaluates in another env of the same dims (e.g. the -noisy twin); by default the
    checkpoint's own env is used. Flow noise is seeded from ``seed`` per task (task index i uses
    ``seed * 1000 + i``), episode j of every task is reset with env seed ``seed + j``. The env's
    observation and action sizes are checked against the checkpoint's before any episode runs.
    """
    agent, meta = loaded.agent, loaded.meta
    env_name = task_name or meta.task_name  # the parsed name carries a recorded env spec
    report = EvaluationReport(
        checkpoint=str(loaded.folder), dataset=meta.dataset, step=meta.step, device=str(agent.device)
    )
    for index, task in enumerate(tasks):
        task_number = parse_task_name(env_name).resolve_task(task)
        if on_task_start:
            on_task_start(task_number)
        started = time.perf_counter()
        result = evaluate(
            policy.chunk_policy(agent, make_generator(agent.device, seed * 1000 + index)), env_name, task,
            episodes=episodes, num_envs=num_envs, seed=seed, on_episode=on_episode,
            check_fit=lambda obs_dim, action_dim, env: check_checkpoint_dims(
                loaded.resolved.ref, meta, obs_dim, action_dim, "the environment", env),
        )
        result.wall_seconds = time.perf_counter() - started
        report.tasks.append(result)
    return report


def evaluate_agent(
    agent: RQLAgent, task_name: str | ParsedName, config: RunConfig, step: int,
    on_episode: EpisodeCallback | None = None, kept: KeptEnvs | None = None,
) -> EvalResult:
    """A training loop's periodic evaluation of the EMA policy: ``config.eval_episodes`` episodes.

    Flow noise comes from its own generator seeded by ``config.seed`` and ``step``, so it never
    shifts a training stream (a run with and without evaluations trains the same weights); episode
    i is reset with env seed ``config.seed + i``. ``kept``: the run's envs, reused from one evaluation
    to the next.
    """
    generator = _periodic_generator(agent.device, config.seed, step)
    return evaluate(
        policy.chunk_policy(agent, generator), task_name, None, episodes=config.eval_episodes,
        num_envs=config.eval_envs, seed=config.seed, on_episode=on_episode, kept=kept,
    )


@dataclass
class GroupEvaluation:
    """``rql eval`` of a seed group (``rql train --seeds``): each seed's report and the mean over seeds.

    Attributes:
        folder: the group folder.
        reports: each seed's report, by seed, in the group's order.
        stopped: seeds stopped by a non-finite loss during training (measured at their last good checkpoint).
    """

    folder: Path
    reports: dict[int, EvaluationReport]
    stopped: set[int] = field(default_factory=set)

    def across_seeds(self) -> list[dict[str, Any]]:
        """Per task: ``{'task', 'mean_success_rate', 'ci95', 'interval', 'seeds'}`` over the seeds."""
        first = next(iter(self.reports.values()))
        rows = []
        for index, result in enumerate(first.tasks):
            mean, interval = mean_over_seeds([r.tasks[index].success_rate for r in self.reports.values()])
            rows.append({"task": result.task, "mean_success_rate": mean, "ci95": interval,
                         "interval": "Student t over seeds", "seeds": len(self.reports)})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` payload."""
        return {"group": str(self.folder), "seeds": {str(s): r.to_dict() for s, r in self.reports.items()},
                "stopped": sorted(self.stopped), "across_seeds": self.across_seeds()}


def evaluate_group(
    folder: Path, device: torch.device, *, best: bool, tasks: list[int | None], episodes: int = 50, seed: int = 0,
    num_envs: int | None = None, task_name: str | None = None, on_task_start: TaskCallback | None = None,
    on_episode: EpisodeCallback | None = None, together: bool | None = None,
) -> GroupEvaluation:
    """Evaluate the latest (or ``best``) checkpoint of every seed of the group in ``folder``.

    Each seed's episodes and flow noise are those ``evaluate_checkpoint`` gives its checkpoint alone with
    the same options (the same env seeds for every seed of the group). On a GPU the seeds' envs step
    together and their policies act in one batched forward pass (``envs.policy.seed_policies``); on a
    CPU one seed after another (faster there, ``evaluate_members``). ``on_episode`` gets the progress
    over all seeds' episodes of the current task. ``together`` overrides that choice.
    """
    record = read_group_record(folder)
    loaded = {s: load_checkpoint(str(seed_dir(folder, s)), device, best=best) for s in record.seeds}
    first = next(iter(loaded.values()))
    env_name = task_name or first.meta.task_name
    reports = {s: EvaluationReport(checkpoint=str(c.folder), dataset=c.meta.dataset, step=c.meta.step,
                                   device=str(c.agent.device)) for s, c in loaded.items()}
    agents = [c.agent for c in loaded.values()]

    def check_fit(obs_dim: int, action_dim: int, env: str) -> None:
        for c in loaded.values():
            check_checkpoint_dims(c.resolved.ref, c.meta, obs_dim, action_dim, "the environment", env)

    for index, task in enumerate(tasks):
        task_number = parse_task_name(env_name).resolve_task(task)
        if on_task_start:
            on_task_start(task_number)
        tally = _CombinedProgress(len(agents) * episodes, on_episode)
        generators = [make_generator(device, seed * 1000 + index) for _ in agents]
        started = time.perf_counter()
        on_gpu = device.type == "cuda"
        results = evaluate_members(
            policy.seed_policies(agents, generators, stacked=on_gpu), [seed] * len(agents), env_name, task,
            episodes=episodes, num_envs=num_envs, together=on_gpu if together is None else together,
            on_episode=tally.add, check_fit=check_fit,
        )
        for s, result in zip(loaded, results, strict=True):
            result.wall_seconds = time.perf_counter() - started
            reports[s].tasks.append(result)
    return GroupEvaluation(folder=Path(folder), reports=reports, stopped=set(record.stopped))


def evaluate_agents(
    agents: list[RQLAgent], task_name: str | ParsedName, configs: list[RunConfig], step: int, *, stacked: bool,
    on_episode: EpisodeCallback | None = None, kept: KeptEnvs | None = None,
) -> list[EvalResult]:
    """The periodic evaluation of a group's seeds: member m gets the episodes and flow noise
    ``evaluate_agent(agents[m], task_name, configs[m], step)`` gives it alone (``stacked``: one batched
    forward pass for all seeds, equal up to float order, with every seed's envs together; else one
    seed after another); ``on_episode`` gets the progress over all members' episodes."""
    episodes = configs[0].eval_episodes
    tally = _CombinedProgress(len(agents) * episodes, on_episode)
    generators = [_periodic_generator(a.device, c.seed, step) for a, c in zip(agents, configs, strict=True)]
    return evaluate_members(
        policy.seed_policies(agents, generators, stacked=stacked), [c.seed for c in configs], task_name, None,
        episodes=episodes, num_envs=configs[0].eval_envs, together=stacked, on_episode=tally.add, kept=kept,
    )


def _periodic_generator(device: torch.device, seed: int, step: int) -> torch.Generator:
    """The flow-noise generator of a periodic evaluation at ``step`` of the run with ``seed``."""
    return make_generator(device, seed + 7919 * (step + 1))


class _CombinedProgress:
    """Turns each member's episode progress into one progress over all members' episodes."""

    def __init__(self, total: int, on_episode: EpisodeCallback | None):
        self.total, self.on_episode = total, on_episode
        self.done = self.successes = 0

    def add(self, member: int, progress: EpisodeProgress) -> None:
        self.done += 1
        self.successes += int(progress.episode.success)
        if self.on_episode is not None:
            self.on_episode(EpisodeProgress(progress.episode, self.done, self.total, self.successes))
