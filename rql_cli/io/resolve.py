"""The one way from a ``--checkpoint REF`` to a checkpoint folder, and to a loaded agent.

Order: a local checkpoint folder; a local run folder (its latest checkpoint); the name of a
checkpoint bundled in ``checkpoints/``; a Hugging Face Hub id ``user/name[@revision]``, pulled into
the Hub cache (or found there when offline). A local folder therefore always wins over a Hub repo
of the same name, and nothing touches the network unless the first three find nothing.

``load_checkpoint`` is the entry point every command uses (eval, rollout, push, finetune): it
resolves once, downloads at most once, and builds and loads the agent once, on the device asked for.
The loading and Hub modules (torch, huggingface_hub) are imported inside the functions that use them:
resolving a local REF is a path check that runs before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rql_cli.errors import CheckpointError, HubError
from rql_cli.io.bundled import bundled_checkpoint_folders
from rql_cli.io.checkpoint_files import (
    CONFIG_FILE,
    REQUIRED_FILES,
    is_checkpoint_folder,
)
from rql_cli.io.group_record import is_group_dir, read_group_record, seed_dir
from rql_cli.io.hub_ref import HubRef, parse_hub_ref
from rql_cli.io.metrics import read_metrics
from rql_cli.io.run_checkpoints import list_checkpoints
from rql_cli.io.run_layout import CHECKPOINTS, RUN_FILE, is_run_dir

if TYPE_CHECKING:
    import torch

    from rql_cli.core.rql import RQLAgent
    from rql_cli.io.checkpoint_meta import CheckpointMeta

Source = Literal["checkpoint", "run", "bundled", "hub"]


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a REF led.

    Attributes:
        ref: the reference as the user gave it.
        folder: the checkpoint folder (for a Hub id, inside the Hub cache).
        source: ``'checkpoint'`` (a local checkpoint folder), ``'run'`` (a run folder's checkpoint),
            ``'bundled'`` or ``'hub'``.
        hub_ref: the Hub repo and revision for ``source == 'hub'``, else None.
    """

    ref: str
    folder: Path
    source: Source
    hub_ref: HubRef | None = None

    @property
    def is_local(self) -> bool:
        """A folder of the user's own (not the shared Hub cache): safe to write metrics into."""
        return self.source in ("checkpoint", "run")


@dataclass
class LoadedCheckpoint:
    """A checkpoint resolved and loaded: the agent on its device, its meta and where it came from."""

    agent: RQLAgent
    meta: CheckpointMeta
    resolved: ResolvedCheckpoint

    @property
    def folder(self) -> Path:
        """The checkpoint folder the weights were read from."""
        return self.resolved.folder


def best_checkpoint(checkpoints: list[Path]) -> Path:
    """The checkpoint with the highest measured success rate (mean over tasks; later wins ties).

    ``checkpoints`` come newest first. Only checkpoints with a metrics.json count; an error when
    none of them was evaluated, or when one's metrics.json is unreadable.
    """
    scored = []
    for folder in checkpoints:
        report = read_metrics(folder)
        if report is not None and report.tasks:
            scored.append((report.mean_success_rate, folder))
    if not scored:
        raise CheckpointError(
            f"--best needs evaluated checkpoints, and none in {checkpoints[0].parent} has a "
            "metrics.json. Train with evaluations (--eval-episodes > 0) or run "
            "`rql eval --checkpoint FOLDER --save` on the checkpoints first."
        )
    # Callers pass the newest first and max keeps the first of equals, so the newest wins a tie.
    return max(scored, key=lambda item: item[0])[1]


def resolve_reference(ref: str, best: bool = False) -> ResolvedCheckpoint:
    """Where ``ref`` leads; raises CheckpointError (HubError for Hub trouble) saying what was tried.

    A run folder means its latest checkpoint, or with ``best`` its best-evaluated one. A Hub id
    is downloaded (once; the cache serves later calls) but not loaded: ``load_checkpoint`` loads.
    """
    path = Path(ref).expanduser()
    local = _resolve_local(path, best)
    if local is not None:
        return ResolvedCheckpoint(ref, *local)
    bundled = bundled_checkpoint_folders()
    if ref in bundled:
        return ResolvedCheckpoint(ref, bundled[ref], "bundled")
    hub_ref = parse_hub_ref(ref)
    if hub_ref is not None:
        return ResolvedCheckpoint(ref, _download(ref, hub_ref), "hub", hub_ref)
    raise _no_checkpoint(ref, bundled)


def reference_source(ref: str) -> Source:
    """Which kind of checkpoint ``ref`` names, by the resolver's rules, without downloading anything."""
    local = _resolve_local(Path(ref).expanduser(), best=False)
    if local is not None:
        return local[1]
    bundled = bundled_checkpoint_folders()
    if ref in bundled:
        return "bundled"
    if parse_hub_ref(ref) is not None:
        return "hub"
    raise _no_checkpoint(ref, bundled)


def _no_checkpoint(ref: str, bundled: dict[str, Path]) -> CheckpointError:
    listed = f" Bundled: {', '.join(sorted(bundled))}." if bundled else ""
    return CheckpointError(
        f"No checkpoint '{ref}': no such folder and no bundled checkpoint of that name.{listed} "
        "Pass a run folder (from `rql train --out`), a checkpoint folder inside its checkpoints/, "
        "a name from `rql list`, or a Hugging Face Hub id USER/NAME[@REVISION]."
    )


def _resolve_local(path: Path, best: bool) -> tuple[Path, Source] | None:
    """(folder, source) for a local checkpoint or run folder; None when ``path`` does not exist."""
    if is_checkpoint_folder(path):
        return path, "checkpoint"
    if path.is_dir() and is_run_dir(path):
        checkpoints = list_checkpoints(path)
        if not checkpoints:
            raise CheckpointError(f"Run folder {path} has no checkpoint yet.")
        return (best_checkpoint(checkpoints[::-1]) if best else checkpoints[-1]), "run"
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            return path, "checkpoint"  # missing its weights: read_meta names what is missing
        if is_group_dir(path):
            seeds = read_group_record(path).seeds
            raise CheckpointError(
                f"{path} is a group of {len(seeds)} seeds (rql train --seeds); name one seed's run folder, e.g. "
                f"{seed_dir(path, seeds[0])}. `rql eval --checkpoint {path}` evaluates every seed."
            )
        raise CheckpointError(
            f"{path} is neither a checkpoint folder ({' + '.join(REQUIRED_FILES)}) nor a run folder "
            f"({RUN_FILE} + {CHECKPOINTS}/)."
        )
    if path.exists():
        raise CheckpointError(f"{path} is a file; --checkpoint takes a checkpoint folder or a run folder.")
    return None


def _download(ref: str, hub_ref: HubRef) -> Path:
    """The Hub repo's snapshot folder (downloaded now, or from the cache), not yet verified."""
    from rql_cli.io.hub import pull_checkpoint

    try:
        return pull_checkpoint(hub_ref.repo_id, revision=hub_ref.revision, verify=False)
    except HubError as error:
        raise HubError(
            f"'{ref}' is no local folder and no bundled checkpoint, so it was taken as a Hub id: {error}"
        ) from None


def resolve_checkpoint(ref: str, best: bool = False) -> Path:
    """The checkpoint folder ``ref`` names (``resolve_reference(ref, best).folder``)."""
    return resolve_reference(ref, best).folder


def load_checkpoint(ref: str, device: torch.device | str = "cpu", best: bool = False) -> LoadedCheckpoint:
    """Resolve ``ref`` (any REF), build its agent on ``device`` and load its weights, once.

    Loading checks every tensor against config.json, so a Hub download is verified by this load;
    CheckpointError names the file (and the Hub id it came from) when something does not fit.
    """
    from rql_cli.io.checkpoint import load_agent

    resolved = resolve_reference(ref, best)
    try:
        agent, meta = load_agent(resolved.folder, device)
    except CheckpointError as error:
        if resolved.hub_ref is None:
            raise
        raise CheckpointError(f"{error} (downloaded from {resolved.hub_ref})") from None
    return LoadedCheckpoint(agent=agent, meta=meta, resolved=resolved)
