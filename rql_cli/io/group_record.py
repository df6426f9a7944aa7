"""A seed group's folder (``rql train --seeds``): ``group.json`` and one ordinary run folder per seed.

    OUT/
      group.json     the seeds, the shared dataset and settings, the update that ran them, and the
                     seeds stopped by a non-finite loss (with the step, the message and the checkpoint
                     they keep)
      seed_0/        an ordinary run folder (``run_layout.py``): eval, rollout, finetune, push take it
      seed_1/ ...

No heavy imports: the CLI checks folders with these before torch loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.errors import RQLError
from rql_cli.io.atomic import read_json, write_json_atomic

GROUP_FILE = "group.json"
GROUP_FORMAT = 1


def seed_dir(group_dir: Path, seed: int) -> Path:
    """The run folder of ``seed`` in a group: ``OUT/seed_3``."""
    return Path(group_dir) / f"seed_{seed}"


def is_group_dir(path: Path) -> bool:
    """A folder with a ``group.json``."""
    return (Path(path) / GROUP_FILE).is_file()


@dataclass
class GroupRecord:
    """What ``group.json`` holds.

    Attributes:
        seeds: every seed of the group, in the order they were given.
        dataset: the dataset name the seeds train on (each seed's record says where it lives).
        env_id: the singletask env the rewards are for.
        settings: the shared config, every field by name but ``seed``.
        update: how the seeds were updated ('stacked', 'threaded' or 'sequential'), as of the last start.
        stopped: ``{seed: {'step', 'term', 'message', 'checkpoint'}}`` for seeds stopped by a
            non-finite loss; the others went on.
    """

    seeds: list[int]
    dataset: str
    env_id: str
    settings: dict[str, Any]
    update: str
    stopped: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def active(self) -> list[int]:
        """The seeds that still train, in order."""
        return [s for s in self.seeds if s not in self.stopped]

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["stopped"] = {str(k): v for k, v in self.stopped.items()}
        return {"format_version": GROUP_FORMAT, "kind": "rql-seed-group", **payload}

    @classmethod
    def from_dict(cls, payload: Any, source: str) -> GroupRecord:
        """Parse a ``group.json`` payload; RQLError names ``source`` when it is broken."""
        try:
            return cls(
                seeds=[int(s) for s in payload["seeds"]], dataset=str(payload["dataset"]),
                env_id=str(payload["env_id"]), settings=dict(payload["settings"]), update=str(payload["update"]),
                stopped={int(k): dict(v) for k, v in (payload.get("stopped") or {}).items()},
            )
        except KeyError as error:
            raise RQLError(f"{source} lacks the field {error}.") from None
        except (TypeError, ValueError, AttributeError) as error:
            raise RQLError(f"{source} is not a valid seed-group record: {error}") from None


def write_group_record(group_dir: Path, record: GroupRecord) -> Path:
    """Write ``OUT/group.json`` atomically."""
    path = Path(group_dir) / GROUP_FILE
    write_json_atomic(path, record.to_dict())
    return path


def read_group_record(group_dir: Path) -> GroupRecord:
    """The record of the group in ``group_dir``; RQLError when there is none or it is broken."""
    path = Path(group_dir) / GROUP_FILE
    if not path.is_file():
        raise RQLError(f"{group_dir} is not a seed group: it has no {GROUP_FILE}.")
    payload = read_json(path)
    return GroupRecord.from_dict(payload, source=str(path))
