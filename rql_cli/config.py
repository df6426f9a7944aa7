"""The typed configuration of an RQL agent and of a training run, and their JSON and ``--set`` forms.

``RQLConfig`` is what defines the agent and its update (a checkpoint's config.json); ``RunConfig``
holds it as ``agent`` beside how one run uses a machine (the run's train_config.json), as LeRobot
splits a policy's config from its training config. ``--set`` takes every field of both by name.

Field names follow the official code's ``get_config()`` so a reader can check them side by side,
except four that we renamed to say what they are (``OFFICIAL_NAMES`` maps them; ``--set`` and config
dicts accept the official names as aliases, so a flag pasted from the paper's scripts works):

    official      here
    h             horizon
    ensemble_ct   ensemble_size
    ema           actor_ema
    layer_norm    value_layer_norm

Each field's help text lives in its ``metadata['help']`` (``FIELD_HELP``): the one source of
``rql train --help``, the model card's config table and error messages. The values each task
starts from are in ``rql_cli.presets``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from rql_cli.errors import ConfigError, closest_names

OFFICIAL_NAMES: dict[str, str] = {
    "h": "horizon",
    "ensemble_ct": "ensemble_size",
    "ema": "actor_ema",
    "layer_norm": "value_layer_norm",
}
"""Official ``get_config()`` names that we renamed -> our field names (accepted as aliases)."""


def _field(default: Any, help: str) -> Any:
    """A dataclass field with its help text; mutable defaults get a fresh copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


_Config = TypeVar("_Config", bound="_Fields")


class _Fields:
    """What both config objects share: a dict of their own fields, checked copies, range checks."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]  # each subclass is a dataclass

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, JSON-friendly (lists, numbers, strings, bools; a nested config as a dict)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """``to_dict`` as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls: type[_Config], data: dict[str, Any], *, strict: bool = True) -> tuple[_Config, list[str]]:
        """Build from a dict of fields; returns (config, unknown field names). Each config defines it."""
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[_Config], text: str, *, strict: bool = True) -> tuple[_Config, list[str]]:
        """``from_dict`` of JSON text: (config, unknown field names)."""
        return cls.from_dict(json.loads(text), strict=strict)

    def _check_ranges(self) -> None:
        """Raise ConfigError for a numeric field of this object outside its ``RANGES`` entry."""
        for item in fields(self):
            if item.name in RANGES:
                low, high = RANGES[item.name]
                value = getattr(self, item.name)
                if not low <= value <= high:
                    raise ConfigError(f"Invalid config: {item.name} must lie in [{low:,}, {high:,}], got {value!r}.")


@dataclass
class RQLConfig(_Fields):
    """What defines an RQL agent and its update: networks, flow, chunks, losses, targets, optimiser, batch.

    A checkpoint's config.json holds exactly this; a resumed run may not change it. How one run used
    a machine is a ``RunConfig``.
    """

    # --- networks -------------------------------------------------------------------------
    actor_hidden_dims: list[int] = _field(
        [512, 512, 512, 512],
        "Hidden widths of the velocity field v(s, x, t) (GELU, no LayerNorm).",
    )
    value_hidden_dims: list[int] = _field(
        [512, 512, 512, 512],
        "Hidden widths of each value-ensemble member V(s, x, t) (GELU + LayerNorm).",
    )
    value_layer_norm: bool = _field(
        True,
        "LayerNorm after the activation on every hidden layer of the value network.",
    )
    ensemble_size: int = _field(10, "Number K of value-ensemble members.")
    # --- flow and chunks ------------------------------------------------------------------
    flow_steps: int = _field(10, "Euler steps F from noise (t=0) to a finished action chunk (t=1).")
    horizon: int = _field(3, "Action-chunk length h; 1 means ordinary single actions.")
    policy_loss_points: str = _field(
        "interpolation",
        "Where the policy loss is evaluated: 'interpolation' (the BC points, official code) or 'reversed'.",
    )
    # --- objective ------------------------------------------------------------------------
    alpha: float = _field(1.0, "Weight of the flow-matching behaviour-cloning loss (larger = closer to BC).")
    expectile: float = _field(0.5, "Expectile kappa of the value loss (0.5 = mean squared error).")
    rho: float = _field(0.0, "Pessimism: the target is mean - rho * std over the ensemble.")
    discount: float = _field(0.99, "Per-environment-step discount gamma.")
    tau: float = _field(0.005, "Polyak rate of the target value ensemble, applied after every gradient step.")
    actor_ema: float = _field(0.999, "EMA decay of the target velocity field used for evaluation.")
    lr: float = _field(3e-4, "Adam learning rate (no weight decay, no gradient clipping).")
    batch_size: int = _field(256, "Windows per gradient step.")
    sparse_rewards: bool = _field(
        False,
        "Turn every non-zero reward into -1 (solved or not), as the paper does for scene and puzzle.",
    )

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> tuple[RQLConfig, list[str]]:
        """Build an agent config from a dict; returns (config, unknown field names).

        Official field names (``OFFICIAL_NAMES``) are accepted for ours. Run fields (a format-1 or -2
        checkpoint's config holds them) are ignored. With ``strict`` an unknown field is an error;
        otherwise it is returned for a warning (a checkpoint written by a newer rql may carry fields
        we do not know).
        """
        values, unknown = _known_values(data, strict)
        config = cls(**{k: coerce_field(k, v) for k, v in values.items() if k in AGENT_FIELDS})
        config.validate()
        return config, unknown

    def replace(self, **changes: Any) -> RQLConfig:
        """A copy with ``changes`` applied (each checked against its field's type), validated."""
        changes = {canonical_field_name(k): v for k, v in changes.items()}
        new = dataclasses.replace(self, **{k: coerce_field(k, v) for k, v in changes.items()})
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ConfigError for values no agent could use (each numeric field's range is in ``RANGES``)."""
        self._check_ranges()
        for name in ("actor_hidden_dims", "value_hidden_dims"):
            widths = getattr(self, name)
            if not 1 <= len(widths) <= MAX_HIDDEN_LAYERS or not all(1 <= w <= MAX_HIDDEN_WIDTH for w in widths):
                raise ConfigError(
                    f"Invalid config: {name} must hold 1 to {MAX_HIDDEN_LAYERS} widths, each in "
                    f"[1, {MAX_HIDDEN_WIDTH:,}]; got {widths}."
                )
        _refuse_failed([
            (0.0 < self.expectile < 1.0, "expectile must lie in (0, 1)", self.expectile),
            (0.0 < self.lr <= 1.0, "lr must lie in (0, 1]", self.lr),
            (
                self.policy_loss_points in ("interpolation", "reversed"),
                "policy_loss_points must be 'interpolation' or 'reversed'",
                self.policy_loss_points,
            ),
        ])


@dataclass
class RunConfig(_Fields):
    """One training run: the agent it trains (``agent``) and how the run uses the machine.

    Steps, intervals, evaluation, checkpoint retention, seed, device, compile, threads, data
    placement and shards: the run's train_config.json holds them beside the agent config. ``--set``
    takes every field of both by name (``flat``/``from_flat``/``replace``).
    """

    agent: RQLConfig = field(default_factory=RQLConfig)
    steps: int = _field(1_000_000, "Gradient steps in total.")
    eval_interval: int = _field(
        100_000,
        "Evaluate and save a checkpoint every this many steps (0: only at the end).",
    )
    eval_episodes: int = _field(50, "Episodes per periodic evaluation (0 disables periodic evaluation).")
    eval_envs: int = _field(1, "Parallel environments for periodic evaluation.")
    log_interval: int = _field(100, "Write a row of metrics.csv every this many steps.")
    keep_checkpoints: int = _field(
        5,
        "Checkpoints a run keeps: the newest this many plus the best evaluated one (0 keeps all).",
    )
    save_interval: int = _field(
        0,
        "Save a checkpoint every this many steps in addition to evaluations (0: with evaluations only).",
    )
    seed: int = _field(0, "Seed of network init, batch sampling, flow noise and evaluation episodes.")
    device: str = _field("auto", "'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dataset_on_device: bool = _field(
        True,
        "Keep the dataset on the training device so sampling needs no host transfer.",
    )
    shard_swap_every: int = _field(
        1000,
        "With a shard folder (100M-transition sets): gradient steps on one shard before the next (official 1000).",
    )
    shard_prefetch: bool = _field(
        True,
        "With a shard folder: read the next shard in a background thread while the current one trains.",
    )
    compile: str = _field(
        "auto",
        "torch.compile of the update: 'auto' (graphs on CUDA; compiled on CPU for runs of 20,000+ steps; "
        "a mode down if compiling fails), 'on', 'off' (eager), 'graphs' (compiled and replayed as CUDA "
        "graphs; CUDA only).",
    )
    threads: int = _field(
        0,
        "CPU threads for the maths: 0 adapts to the cores other processes leave free; N fixes N.",
    )
    matmul_precision: str = _field(
        "highest",
        "fp32 matmul precision: 'highest' keeps full fp32 (on a CPU through the faster of MKL and oneDNN, "
        "measured once per machine, oneDNN only if as accurate); 'high'/'medium' allow TF32 on GPUs; "
        "'medium' on a CPU with bf16 instructions multiplies between hidden layers in bf16 (1.45-1.65x "
        "faster updates, docs/speed.md).",
    )
    log_to: str = _field(
        "",
        "Loggers besides metrics.csv, eval.csv and curves.png, comma separated: 'tensorboard' (RUN/tensorboard/, "
        "extra rql-cli[tensorboard]), 'wandb' (offline unless WANDB_MODE says otherwise, extra rql-cli[wandb]).",
    )
    group_update: str = _field(
        "auto",
        "How a --seeds group updates its seeds: 'stacked' (one vmapped step for all seeds, each kernel N times "
        "larger), 'threaded' (CPU: each seed's own step, the seeds side by side on the threads), 'sequential' "
        "(each seed's own step in turn over all threads), 'auto' (stacked on CUDA, threaded on CPU, where it "
        "measured fastest). 'threaded' and 'sequential' are bit for bit the single run.",
    )

    @classmethod
    def of(cls, **fields: Any) -> RunConfig:
        """A run config from agent and run fields by name (the rest at their defaults), checked."""
        return cls.from_flat(fields)[0]

    def flat(self) -> dict[str, Any]:
        """Every field of the agent and of the run by name, as ``--set`` names them."""
        run = self.to_dict()
        return {**run.pop("agent"), **run}

    @classmethod
    def from_flat(cls, data: dict[str, Any], *, strict: bool = True) -> tuple[RunConfig, list[str]]:
        """Build from a dict of agent and run fields by name; returns (config, unknown field names)."""
        values, unknown = _known_values(data, strict)
        agent, _ = RQLConfig.from_dict({k: v for k, v in values.items() if k in AGENT_FIELDS})
        config = cls(agent=agent, **{k: coerce_field(k, v) for k, v in values.items() if k in RUN_FIELDS})
        config.validate()
        return config, unknown

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, strict: bool = True) -> tuple[RunConfig, list[str]]:
        """``from_flat`` of ``to_dict``'s form (the agent nested under 'agent') or of a flat dict."""
        if not isinstance(data, dict):
            raise ConfigError(f"A config must be a JSON object of fields, got {type(data).__name__}.")
        nested = data.get("agent")
        flat = {**nested, **{k: v for k, v in data.items() if k != "agent"}} if isinstance(nested, dict) else data
        return cls.from_flat(flat, strict=strict)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (agent or run fields by name) applied, each checked, validated."""
        changes = {canonical_field_name(k): v for k, v in changes.items()}
        for name in changes:
            if name not in field_names():
                raise ConfigError(_unknown_field_message(name))
        agent = self.agent.replace(**{k: v for k, v in changes.items() if k in AGENT_FIELDS})
        run = {k: coerce_field(k, v) for k, v in changes.items() if k in RUN_FIELDS}
        new = dataclasses.replace(self, agent=agent, **run)
        new.validate()
        return new

    @property
    def loggers(self) -> list[str]:
        """The loggers of ``log_to``, in order."""
        return [name.strip() for name in self.log_to.split(",") if name.strip()]

    def validate(self) -> None:
        """Raise ConfigError for values no run could use."""
        self.agent.validate()
        self._check_ranges()
        _refuse_failed([
            (self.compile in COMPILE_CHOICES, f"compile must be one of {', '.join(COMPILE_CHOICES)}", self.compile),
            (all(name in LOGGER_CHOICES for name in self.loggers),
             f"log_to takes {', '.join(LOGGER_CHOICES)}, comma separated", self.log_to),
            (self.matmul_precision in MATMUL_PRECISION_CHOICES,
             f"matmul_precision must be one of {', '.join(MATMUL_PRECISION_CHOICES)}", self.matmul_precision),
            (self.group_update in GROUP_UPDATE_CHOICES,
             f"group_update must be one of {', '.join(GROUP_UPDATE_CHOICES)}", self.group_update),
        ])


def _refuse_failed(checks: list[tuple[bool, str, Any]]) -> None:
    for ok, message, value in checks:
        if not ok:
            raise ConfigError(f"Invalid config: {message}, got {value!r}.")


def _known_values(data: dict[str, Any], strict: bool) -> tuple[dict[str, Any], list[str]]:
    """``data`` by our field names, and its names that are no field (an error with ``strict``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"A config must be a JSON object of fields, got {type(data).__name__}.")
    known = set(field_names())
    unknown = [k for k in data if canonical_field_name(k) not in known]
    if unknown and strict:
        raise ConfigError(_unknown_field_message(unknown[0]))
    return {canonical_field_name(k): v for k, v in data.items() if k not in unknown}, unknown


AGENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RQLConfig))
"""The agent config's fields, in declaration order."""
RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RunConfig) if f.name != "agent")
"""The run config's own fields, in declaration order."""
FIXED_ON_RESUME = frozenset({*AGENT_FIELDS, "dataset_on_device"})
"""Fields a resumed run may not change: the agent's (its saved weights and Adam moments were made for
them) and where the data lives (the sampler's saved generator state belongs to that device)."""


COMPILE_CHOICES = ("auto", "off", "on", "graphs")
"""Values of the ``compile`` field (``rql_cli.runtime.compile_mode`` says what each runs)."""

LOGGER_CHOICES = ("tensorboard", "wandb")
"""Loggers ``log_to`` names (``rql_cli.training.loggers`` writes them)."""
GROUP_UPDATE_CHOICES = ("auto", "stacked", "threaded", "sequential")
"""Values of the ``group_update`` field (``rql_cli.training.group`` says what each runs)."""
MATMUL_PRECISION_CHOICES = ("highest", "high", "medium")
"""Values of the ``matmul_precision`` field (``rql_cli.training.matmul_route`` says what each sets)."""

MAX_HIDDEN_LAYERS = 64
MAX_HIDDEN_WIDTH = 65_536
RANGES: dict[str, tuple[float, float]] = {
    "ensemble_size": (1, 1024),
    "flow_steps": (1, 1000),
    "horizon": (1, 1000),
    "batch_size": (2, 1_000_000),
    "alpha": (0.0, 1e9),
    "rho": (0.0, 1e3),
    "discount": (0.0, 1.0),
    "tau": (0.0, 1.0),
    "actor_ema": (0.0, 1.0),
    "steps": (0, 10**12),
    "eval_interval": (0, 10**12),
    "eval_episodes": (0, 1_000_000),
    "eval_envs": (1, 1024),
    "log_interval": (1, 10**12),
    "save_interval": (0, 10**12),
    "keep_checkpoints": (0, 10**6),
    "seed": (0, 2**31 - 1),
    "threads": (0, 4096),
    "shard_swap_every": (1, 10**12),
}
"""Closed range of every numeric field (sizes are bounded so a hostile config.json cannot ask for
the impossible); ``validate`` checks them and the help shows them. expectile lies in (0, 1), lr in (0, 1]."""


def _help_with_range(name: str, text: str) -> str:
    if name in RANGES:
        low, high = RANGES[name]
        return f"{text} Range: {low:,} to {high:,}."
    return text


FIELD_HELP: dict[str, str] = {
    f.name: _help_with_range(f.name, f.metadata["help"]) for f in (*fields(RQLConfig), *fields(RunConfig))
    if f.name != "agent"
}
"""Help text of every config field, agent and run, by name (from the fields' metadata, with its range)."""


def field_names() -> list[str]:
    """Every config field's name: the agent's, then the run's, each in declaration order."""
    return [*AGENT_FIELDS, *RUN_FIELDS]


def field_default(name: str) -> Any:
    """The default value of field ``name`` (before any task preset)."""
    return RunConfig().flat()[canonical_field_name(name)]


def canonical_field_name(name: str) -> str:
    """Our name for a field given by our name or by its official name (``h`` -> ``horizon``)."""
    return OFFICIAL_NAMES.get(name, name)


def _field_type(name: str) -> Any:
    return typing.get_type_hints(RQLConfig if name in AGENT_FIELDS else RunConfig)[name]


def _unknown_field_message(name: str) -> str:
    near = closest_names(name, [*field_names(), *OFFICIAL_NAMES])
    near = list(dict.fromkeys(canonical_field_name(n) for n in near))
    hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
    return (
        f"Unknown config field '{name}'.{hint} Valid fields: {', '.join(field_names())}."
    )


def coerce_field(name: str, value: Any) -> Any:
    """Check ``value`` against the declared type of field ``name`` and return it in that type.

    Ints are accepted for float fields; bools are never accepted as numbers. ``name`` may be an
    official alias (``h``).
    """
    name = canonical_field_name(name)
    if name not in field_names():
        raise ConfigError(_unknown_field_message(name))
    kind = _field_type(name)
    type_name = getattr(kind, "__name__", str(kind))

    def bad() -> ConfigError:
        return ConfigError(
            f"Config field '{name}' expects {_describe(kind)}, got {json.dumps(value)} "
            f"({type(value).__name__})."
        )

    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad()
    if kind is str:
        if isinstance(value, str):
            return value
        raise bad()
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if isinstance(value, (list, tuple)) and all(
            isinstance(v, item) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise bad()
    raise ConfigError(f"Config field '{name}' has an unsupported type {type_name}.")


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return f"a JSON list of {item.__name__}s, e.g. [256, 256]"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        kind, str(kind)
    )


def parse_set_option(text: str) -> tuple[str, Any]:
    """Parse one ``--set key=value`` into (field name, typed value).

    The value is JSON (bare words are taken as strings); ``key`` may be an official name
    (``--set h=5`` sets ``horizon``), and the returned name is always ours.
    """
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}' (e.g. --set alpha=3.0).")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # bare strings such as device=cuda:1
    name = canonical_field_name(key)
    is_list = name in field_names() and typing.get_origin(_field_type(name)) is list
    if is_list and isinstance(value, str) and "," in value:
        value = _comma_list(str(value))  # value_hidden_dims=256,256: no brackets for zsh to expand
    return canonical_field_name(key), coerce_field(key, value)


def _comma_list(text: str) -> Any:
    try:
        return [json.loads(part) for part in text.strip("[]").split(",") if part.strip()]
    except json.JSONDecodeError:
        return text


MAX_GROUP_SEEDS = 256
"""Most seeds one ``--seeds`` group takes (each holds its own networks, Adam moments and run folder)."""


def parse_seeds(text: str) -> list[int]:
    """The seeds of a ``--seeds`` list: '0-7', '0,3,5' or '0-3,8', in order and without repeats.

    ConfigError, naming the bad part, for anything else, a descending range, a seed out of the
    config's range, a repeated seed or more than ``MAX_GROUP_SEEDS``.
    """
    low, high = RANGES["seed"]
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ConfigError(f"--seeds takes seeds and ranges such as 0-7 or 0,3,5; '{part}' is neither.")
        start, end = int(first), int(last) if dash else int(first)
        if end < start:
            raise ConfigError(f"--seeds range {part} runs backwards; write {end}-{start}.")
        if len(seeds) + end - start + 1 > MAX_GROUP_SEEDS:
            raise ConfigError(f"--seeds {text} names more than {MAX_GROUP_SEEDS} seeds; split it into groups.")
        seeds.extend(range(start, end + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ConfigError(f"--seeds {text} names seed {repeated[0]} twice.")
    if seeds[-1] > high or min(seeds) < low:
        raise ConfigError(f"--seeds must lie in [{low:,}, {high:,}], got {text}.")
    return seeds
