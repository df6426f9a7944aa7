"""The run record, ``RUN_DIR/train_config.json``: one schema (``RunRecord``), one writer, one reader.

The reader also takes format 2's flat config and format 1's ``config.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rql_cli.config import RunConfig
from rql_cli.errors import RQLError
from rql_cli.io.atomic import read_json, write_json_atomic
from rql_cli.io.run_layout import LEGACY_RUN_FILE, RUN_FILE, is_run_dir

if TYPE_CHECKING:  # named for the reader: importing them here would load torch for every run-folder check
    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint_meta import CheckpointMeta

RUN_FORMAT = 3


@dataclass
class RunRecord:
    """What a run trains, on what, and its lineage (``train_config.json``).

    Attributes:
        dataset: dataset file stem or name as given, e.g. ``'cube-single-play-v0'``.
        data: where the files live: ``{'dataset_dir', 'dataset_path', 'task'}`` (each may be None).
        env_id: ogbench singletask name the rewards were relabelled for.
        obs_dim, action_dim: sizes of one observation and one action.
        config: the run's config (the agent's under ``agent``) as it trains now; format 2 records held
            the same fields flat, which the reader still takes.
        versions: rql, torch and ogbench versions that started the run.
        parent: for a fine-tuning run, its lineage (``CheckpointMeta.lineage``: the source REF, what it
            resolved to, its step, the method); None for a run from scratch.
        finetune: for a fine-tuning run, its settings (online steps, UTD, balanced, offline data);
            ``rql finetune --resume`` reads them back.
        history: ``{'step', 'event', 'changes'}`` entries: when the run started or resumed, and the
            config fields that changed then (``{field: [old, new]}``).
    """

    dataset: str
    data: dict[str, Any]
    env_id: str
    obs_dim: int
    action_dim: int
    config: RunConfig
    versions: dict[str, str] = field(default_factory=dict)
    parent: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The train_config.json payload."""
        payload = asdict(self)
        payload["config"] = self.config.to_dict()
        return {"format_version": RUN_FORMAT, **payload}

    @classmethod
    def from_dict(cls, payload: Any, source: str) -> RunRecord:
        """Parse either format of the run record; RQLError names ``source`` when it is broken."""
        if not isinstance(payload, dict):
            raise RQLError(f"{source} must hold a JSON object, not a {type(payload).__name__}.")
        try:
            config, _ = RunConfig.from_dict(payload["config"], strict=False)
            return cls(
                dataset=str(payload["dataset"]),
                data=dict(payload.get("data") or {}),
                env_id=str(payload["env_id"]),
                obs_dim=int(payload["obs_dim"]),
                action_dim=int(payload["action_dim"]),
                config=config,
                versions=dict(payload.get("versions") or {}),
                parent=payload.get("parent"),
                finetune=payload.get("finetune"),
                history=list(payload.get("history") or []),
            )
        except KeyError as error:
            raise RQLError(f"{source} lacks the field {error}.") from None
        except (RQLError, TypeError, ValueError) as error:
            raise RQLError(f"{source} is not a valid run record: {error}") from None


@dataclass
class RunOrigin:
    """Where a fine-tuning run starts from.

    Attributes:
        folder: the source checkpoint folder (its train state, if it has one, continues Adam).
        lineage: what the run records about it (``CheckpointMeta.lineage``).
        settings: the fine-tuning settings (``RunRecord.finetune``).
        agent, meta: the source, already loaded (``io.resolve.load_checkpoint``), so a fine-tune
            copies its weights instead of reading the files again.
    """

    folder: Path
    lineage: dict[str, Any]
    settings: dict[str, Any]
    agent: RQLAgent
    meta: CheckpointMeta


def write_run_record(run_dir: Path, record: RunRecord) -> Path:
    """Write ``record`` as ``RUN_DIR/train_config.json`` atomically (the folder is made if missing)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    path = Path(run_dir) / RUN_FILE
    write_json_atomic(path, record.to_dict())
    return path


def read_run_record(run_dir: Path) -> RunRecord:
    """The run record of ``run_dir`` (format 2's train_config.json, else format 1's config.json)."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not path.is_file() and (run_dir / LEGACY_RUN_FILE).is_file():
        path = run_dir / LEGACY_RUN_FILE
    if not path.is_file():
        raise RQLError(f"{run_dir} is not a run folder: it has no {RUN_FILE}.")
    payload = read_json(path)
    return RunRecord.from_dict(payload, source=str(path))


def record_of_checkpoint(checkpoint_folder: Path) -> RunRecord | None:
    """The record of the run folder holding ``checkpoint_folder`` (``RUN/checkpoints/step_N``), if any.

    None for a bundled, pulled or copied checkpoint, or a run record that cannot be read.
    """
    run_dir = Path(checkpoint_folder).parent.parent
    if not is_run_dir(run_dir):
        return None
    try:
        return read_run_record(run_dir)
    except RQLError:
        return None


def recorded_data_location(checkpoint_folder: Path, dataset: str) -> tuple[Path | None, Path | None]:
    """(dataset_dir, dataset_path) where the run holding ``checkpoint_folder`` found ``dataset``.

    A checkpoint inside a run folder was trained on files its run record names; fine-tuning it online
    replays them unless told otherwise. (None, None) for a checkpoint outside a run folder, a record
    of another dataset, or files no longer where they were.
    """
    record = record_of_checkpoint(checkpoint_folder)
    if record is None or record.dataset != dataset:
        return None, None
    path, folder = record.data.get("dataset_path"), record.data.get("dataset_dir")
    if path and Path(path).exists():
        return None, Path(path)
    if folder and Path(folder).is_dir():
        return Path(folder), None
    return None, None
