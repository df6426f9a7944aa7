"""Several independent RQL agents (seeds) updated together: ``StackedSeeds`` and ``SequentialSeeds``.

Both take agents built alone (each with its own initialisation) and update them from per-seed
batches and per-seed generators, drawing exactly the random numbers ``RQLAgent.update`` would.

``StackedSeeds`` stacks every parameter, target and Adam moment along a leading seed dimension and
runs the agent's own ``loss_terms`` under ``torch.func.vmap``: one chain of kernels, each N times
larger. On a GPU, where one agent's update is bound by its kernel count rather than its arithmetic,
that is N seeds for nearly the price of one. Each agent keeps its modules, whose parameters become
views of the stacked tensors (and its Adam state views of the stacked moments), so saving, evaluating
or acting on one seed reads the live weights with no copy.

``SequentialSeeds`` runs each agent's own update in turn, bit for bit the single run; ``ThreadedSeeds``
runs them side by side on a CPU's cores, with the same numbers. On a CPU, where the matmuls already
fill the cores, stacking buys little; seeds side by side measured at least as fast as stacking and as
one seed at a time over all the threads (benchmarks/seed_groups.py measures each way).

Adam is elementwise and each seed's loss depends on its own slice only, so a stacked step is each
seed's step up to the order of float sums inside the batched matmuls; a non-finite loss in one seed
never reaches another's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from rql_cli.core.batch import ChunkBatch
from rql_cli.core.flow import euler_generate
from rql_cli.core.rql import RQLAgent, StepNoise

BATCH_FIELDS = tuple(f.name for f in fields(ChunkBatch))
ONLINE_TO_TARGET = {"velocity.": "velocity_target.", "value.": "value_target."}
"""Prefix of each online network's parameter names -> its target network's."""


class _AgentLosses(nn.Module):
    """``agent.loss_terms`` as a module call, so ``functional_call`` can swap in one seed's weights."""

    def __init__(self, agent: RQLAgent):
        super().__init__()
        self.agent = agent

    def forward(
        self, batch: tuple[torch.Tensor, ...], noise: tuple[torch.Tensor, ...], policy_depth: torch.Tensor | None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        value_depth, next_noise, bc_noise, bc_time = noise
        step_noise = StepNoise(value_depth, next_noise, bc_noise, bc_time, policy_depth)
        return self.agent.loss_terms(ChunkBatch(*batch), step_noise)


def _stack_batches(batches: Sequence[ChunkBatch]) -> tuple[torch.Tensor, ...]:
    """Per-seed batches -> one tensor per ChunkBatch field with a leading seed dim (N, B, ...)."""
    return tuple(torch.stack([getattr(b, name) for b in batches]) for name in BATCH_FIELDS)


class StackedSeeds:
    """N agents of one config, their parameters and Adam moments stacked, updated by one vmapped step.

    Args:
        agents: agents built alone (same config, dims and device), each with its own weights and, when
            resumed, Adam moments at the same step.
    """

    def __init__(self, agents: Sequence[RQLAgent]):
        self.agents = list(agents)
        template = self.agents[0]
        self.device, self.config = template.device, template.config
        self._losses = _AgentLosses(template)
        self.params = {name: self._stack_parameter(name) for name, _ in template.named_parameters()}
        online = [name for name in self.params if name.startswith(tuple(ONLINE_TO_TARGET))]
        self._targets = {prefix: ([self.params[_target_name(n)] for n in online if n.startswith(prefix)],
                                  [self.params[n] for n in online if n.startswith(prefix)])
                         for prefix in ONLINE_TO_TARGET}
        self.optimizer = torch.optim.Adam(
            [self.params[name] for name in online], lr=self.config.lr, fused=True,
            capturable=self.device.type == "cuda",
        )
        for name in online:
            self._stack_adam_state(name)
        depth_dim = 0 if self.config.policy_loss_points == "reversed" else None
        self._vmapped = torch.func.vmap(self._one_seed, in_dims=(0, 0, 0, depth_dim))
        self._loss_fn: Any = self._vmapped
        self.compile_mode: str | None = None

    def _stack_parameter(self, name: str) -> torch.Tensor:
        """Stack the agents' parameter ``name`` (N, ...) and make each agent's parameter a view of it."""
        members = [agent.get_parameter(name) for agent in self.agents]
        stacked = torch.stack([p.detach() for p in members])
        for index, parameter in enumerate(members):
            parameter.data = stacked[index]
        return stacked.requires_grad_(members[0].requires_grad)

    def _stack_adam_state(self, name: str) -> None:
        """Seed the stacked Adam state of ``name`` from the agents' (zeros when they never stepped),
        then make each agent's state views of it, so its checkpoint saves the live moments."""
        stacked = self.params[name]
        members = [agent.get_parameter(name) for agent in self.agents]
        found = [agent.optimizer.state.get(p) for agent, p in zip(self.agents, members, strict=True)]
        states = [s for s in found if s]
        steps = {float(s["step"]) for s in states}
        if len(steps) > 1 or (steps and len(states) < len(found)):
            raise ValueError(f"the agents' Adam states are at different steps ({sorted(steps)}); stack agents "
                             "resumed from one step")
        moments = {key: torch.stack([s[key].to(stacked) for s in states]) if steps else torch.zeros_like(stacked)
                   for key in ("exp_avg", "exp_avg_sq")}
        step = torch.tensor(steps.pop() if steps else 0.0, dtype=torch.float32, device=self.device)
        self.optimizer.state[stacked] = {"step": step, **moments}
        for index, (agent, parameter) in enumerate(zip(self.agents, members, strict=True)):
            agent.optimizer.state[parameter] = {"step": step, **{k: v[index] for k, v in moments.items()}}

    def _one_seed(
        self, params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...], noise: tuple[torch.Tensor, ...],
        policy_depth: torch.Tensor | None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        named = {f"agent.{name}": value for name, value in params.items()}
        return torch.func.functional_call(self._losses, named, (batch, noise, policy_depth))

    def set_hidden_product_dtype(self, dtype: torch.dtype | None) -> None:
        """``RQLAgent.set_hidden_product_dtype`` for every seed (the vmapped losses run the first's modules)."""
        for agent in self.agents:
            agent.set_hidden_product_dtype(dtype)

    def compile_update(self, mode: str | None = "default") -> None:
        """Compile the vmapped loss terms (forward and backward) like ``RQLAgent.compile_update``."""
        self.compile_mode = mode
        self._loss_fn = self._vmapped if mode is None else torch.compile(
            self._vmapped, mode=mode, dynamic=False, fullgraph=True)

    def warm_up(self, batch: ChunkBatch) -> None:
        """Pay a compile now: the loss forward and backward on ``batch`` (every seed) with zero noise."""
        size, count = batch.observations.shape[0], len(self.agents)
        depth = torch.zeros(count, size, 1, device=self.device)
        chunk = torch.zeros(count, size, self.agents[0].chunk_dim, device=self.device)
        policy_depth = depth if self.config.policy_loss_points == "reversed" else None
        self._mark_graph_step()
        losses, _ = self._loss_fn(self.params, _stack_batches([batch] * count), (depth, chunk, chunk, depth),
                                  policy_depth)
        losses["total"].sum().backward()
        self.optimizer.zero_grad(set_to_none=True)

    def update(self, batches: Sequence[ChunkBatch], generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """One Adam step of every seed on its batch, noise drawn from its generator as ``RQLAgent.update``
        draws it; returns each logged term as a detached (N,) tensor (no host sync)."""
        size = batches[0].observations.shape[0]
        draws = [agent.draw_noise(size, generator) for agent, generator in zip(self.agents, generators, strict=True)]
        noise = tuple(torch.stack([getattr(d, name) for d in draws])
                      for name in ("value_depth", "next_noise", "bc_noise", "bc_time"))
        depths = [d.policy_depth for d in draws if d.policy_depth is not None]
        policy_depth = torch.stack(depths) if depths else None
        self._mark_graph_step()
        losses, stats = self._loss_fn(self.params, _stack_batches(batches), noise, policy_depth)
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].sum().backward()  # each seed's parameters get the gradient of its own loss only
        self.optimizer.step()
        self._update_targets()
        for agent in self.agents:
            agent.step += 1
        return {**{k: v.detach() for k, v in losses.items()}, **stats}

    def _mark_graph_step(self) -> None:
        if self.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    @torch.no_grad()
    def _update_targets(self) -> None:
        """Polyak (value, rate tau) and EMA (velocity, rate 1 - actor_ema) targets, as ``RQLAgent``'s."""
        rates = {"value.": self.config.tau, "velocity.": 1.0 - self.config.actor_ema}
        for prefix, (targets, online) in self._targets.items():
            torch._foreach_lerp_(targets, online, rates[prefix])


class SequentialSeeds:
    """N agents updated one after another by their own ``update``: the single run's numbers exactly."""

    def __init__(self, agents: Sequence[RQLAgent]):
        self.agents = list(agents)
        self.device = self.agents[0].device
        self.compile_mode: str | None = None

    def set_hidden_product_dtype(self, dtype: torch.dtype | None) -> None:
        """``RQLAgent.set_hidden_product_dtype`` for every seed."""
        for agent in self.agents:
            agent.set_hidden_product_dtype(dtype)

    def compile_update(self, mode: str | None = "default") -> None:
        """Compile each agent's update (inductor's cache makes every one after the first quick)."""
        self.compile_mode = mode
        for agent in self.agents:
            agent.compile_update(mode)

    def warm_up(self, batch: ChunkBatch) -> None:
        """Pay each agent's compile now on ``batch``."""
        for agent in self.agents:
            agent.warm_up(batch)

    def update(self, batches: Sequence[ChunkBatch], generators: Sequence[torch.Generator]) -> dict[str, torch.Tensor]:
        """Each agent's ``update`` on its batch and generator; each logged term as an (N,) tensor."""
        rows = self._step_each(batches, generators)
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}

    def _step_each(
        self, batches: Sequence[ChunkBatch], generators: Sequence[torch.Generator]
    ) -> list[dict[str, torch.Tensor]]:
        return [agent.update(batch, generator)
                for agent, batch, generator in zip(self.agents, batches, generators, strict=True)]


class ThreadedSeeds(SequentialSeeds):
    """N agents' own updates side by side on a CPU's threads: the single run's numbers exactly.

    ``set_threads(T)`` makes min(T, N) workers, each with T // workers of torch's intra-op threads
    (one each when there are at least as many seeds as threads). Each agent's step runs whole on one
    worker, and a worker that is free takes the next seed not yet stepped, so the seeds run as
    separate runs would, without an OpenMP barrier per operation shared between them. Compiled, each
    graph runs from inductor's C++ wrapper with the GIL released (without it, inductor's kernels hold
    the GIL and the seeds wait on each other); only the Python between graphs (the optimiser step,
    the target updates) takes turns. Call ``set_threads`` before compiling: inductor builds its
    kernels for the calling thread's intra-op count.
    """

    def __init__(self, agents: Sequence[RQLAgent], threads: int | None = None):
        super().__init__(agents)
        self.workers, self.intra_threads = 1, torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None
        if threads is not None:
            self.set_threads(threads)

    def set_threads(self, threads: int) -> None:
        """Use ``threads`` CPU threads from the next ``update`` on (and now on the calling thread)."""
        workers = max(1, min(threads, len(self.agents)))
        self.intra_threads = max(1, threads // workers)
        torch.set_num_threads(self.intra_threads)  # this thread: the compile, and the steps with one worker
        if workers != self.workers:
            self.close()
            self.workers = workers
            if workers > 1:
                self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rql-seed")

    def _step_each(
        self, batches: Sequence[ChunkBatch], generators: Sequence[torch.Generator]
    ) -> list[dict[str, torch.Tensor]]:
        if self._pool is None:
            return super()._step_each(batches, generators)
        steps = [self._pool.submit(self._step, agent, batch, generator)
                 for agent, batch, generator in zip(self.agents, batches, generators, strict=True)]
        return [step.result() for step in steps]  # re-raises a seed's exception here, in seed order

    def compile_update(self, mode: str | None = "default") -> None:
        """Compile each agent's update; on a CPU through inductor's C++ wrapper, so a compiled step
        holds the GIL only between its graphs (the kernels, and so the numbers, are the plain compile's)."""
        self.compile_mode = mode
        for agent in self.agents:
            agent.compile_update(mode, cpp_wrapper=agent.device.type == "cpu")

    def _step(self, agent: RQLAgent, batch: ChunkBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if torch.get_num_threads() != self.intra_threads:  # OpenMP's count is per thread: set it on each
            torch.set_num_threads(self.intra_threads)
        return agent.update(batch, generator)

    def close(self) -> None:
        """Stop the workers (after any step in flight); ``update`` then runs on the calling thread."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool, self.workers = None, 1


SeedUpdate = StackedSeeds | SequentialSeeds


class StackedActing:
    """N agents' EMA velocity fields acting as one: a single vmapped Euler integration for all seeds.

    The weights are stacked once (a copy: build one per evaluation). Each seed's flow noise is drawn
    from its own generator exactly as ``RQLAgent.act`` draws it, so the chunks equal each seed's own
    ``act`` up to the order of float sums inside the batched matmuls.
    """

    def __init__(self, agents: Sequence[RQLAgent]):
        self.agents = list(agents)
        template = self.agents[0]
        self.field = template.velocity_target
        self.params = {name: torch.stack([agent.velocity_target.get_parameter(name).detach() for agent in self.agents])
                       for name, _ in self.field.named_parameters()}
        self._generate = torch.func.vmap(self._one_seed)

    def _one_seed(self, params: dict[str, torch.Tensor], obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        def velocity(o: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.field, params, (o, x, t))

        return euler_generate(velocity, obs, noise, self.agents[0].config.flow_steps)

    @torch.no_grad()
    def act(
        self, observations: dict[int, torch.Tensor], generators: Sequence[torch.Generator]
    ) -> dict[int, torch.Tensor]:
        """Chunks (n_m, h, A) in [-1, 1] for the observations (n_m, obs_dim) of each seed index m given.

        Seeds not in ``observations`` draw no noise; the others' rows are padded to the longest with
        zeros (their chunks are dropped), so the batched call has one shape per row count.
        """
        template = self.agents[0]
        rows = max(obs.shape[0] for obs in observations.values())
        obs_batch = torch.zeros(len(self.agents), rows, template.obs_dim, device=template.device)
        noise_batch = torch.zeros(len(self.agents), rows, template.chunk_dim, device=template.device)
        for member, obs in observations.items():
            obs_batch[member, : obs.shape[0]] = obs
            noise_batch[member, : obs.shape[0]] = self.agents[member].chunk_noise(obs.shape[0], generators[member])
        chunks = self._generate(self.params, obs_batch, noise_batch).clamp(-1.0, 1.0)
        return {member: chunks[member, : obs.shape[0]].view(obs.shape[0], template.config.horizon, template.action_dim)
                for member, obs in observations.items()}


def _target_name(online_name: str) -> str:
    for online, target in ONLINE_TO_TARGET.items():
        if online_name.startswith(online):
            return target + online_name[len(online):]
    raise KeyError(online_name)
