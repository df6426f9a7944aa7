"""The one checkpoint resolver behind every ``--checkpoint REF``.

Order: a local checkpoint folder; a local run folder (its latest checkpoint); the name of a
checkpoint bundled in ``checkpoints/``; a Hugging Face Hub id ``user/name[@revision]``, pulled into
the Hub cache (or found there when offline). A local folder therefore always wins over a Hub repo
of the same name, and nothing touches the network unless the first three find nothing.
"""

from __future__ import annotations

from pathlib import Path

from rql_cli.errors import CheckpointError, HubError
from rql_cli.io import run_files
from rql_cli.io.bundled import bundled_checkpoints
from rql_cli.io.checkpoint import read_metrics, task_results
from rql_cli.io.hub import parse_hub_ref


def best_checkpoint(checkpoints: list[Path]) -> Path:
    """The checkpoint with the highest measured success rate (mean over tasks; later wins ties).

    Only checkpoints with a metrics.json count; an error when none of them was evaluated.
    """
    scored = []
    for folder in checkpoints:
        results = task_results(read_metrics(folder))
        if results:
            scored.append((sum(r["success_rate"] for r in results) / len(results), folder))
    if not scored:
        raise CheckpointError(
            f"--best needs evaluated checkpoints, and none in {checkpoints[0].parent} has a "
            "metrics.json. Train with evaluations (--eval-episodes > 0) or run "
            "`rql eval --checkpoint FOLDER --save` on the checkpoints first."
        )
    # Callers pass the newest first and max keeps the first of equals, so the newest wins a tie.
    return max(scored, key=lambda item: item[0])[1]


def resolve_checkpoint(ref: str, best: bool = False) -> Path:
    """The checkpoint folder that ``ref`` names; raises CheckpointError saying what was tried.

    A run folder means its latest checkpoint, or with ``best`` its best-evaluated one.
    """
    path = Path(ref).expanduser()
    if (path / "config.json").is_file() and (path / "velocity.safetensors").exists():
        return path
    if path.is_dir() and run_files.is_run_dir(path):
        checkpoints = run_files.list_checkpoints(path)
        if not checkpoints:
            raise CheckpointError(f"Run folder {path} has no checkpoint yet.")
        return best_checkpoint(checkpoints[::-1]) if best else checkpoints[-1]
    if path.is_dir():
        if (path / "config.json").is_file():
            return path  # a checkpoint folder missing its weights: read_meta names what is missing
        raise CheckpointError(
            f"{path} is neither a checkpoint folder (config.json + velocity.safetensors + "
            "value.safetensors) nor a run folder (config.json + checkpoints/)."
        )
    if path.exists():
        raise CheckpointError(f"{path} is a file; --checkpoint takes a checkpoint folder or a run folder.")
    bundled = {entry["name"]: Path(entry["path"]) for entry in bundled_checkpoints()}
    if ref in bundled:
        return bundled[ref]
    hub_ref = parse_hub_ref(ref)
    if hub_ref is not None:
        from rql_cli.io.hub import pull_checkpoint

        try:
            return pull_checkpoint(hub_ref.repo_id, revision=hub_ref.revision)
        except HubError as error:
            raise HubError(
                f"'{ref}' is no local folder and no bundled checkpoint, so it was taken as a Hub id: {error}"
            ) from None
    listed = f" Bundled: {', '.join(sorted(bundled))}." if bundled else ""
    raise CheckpointError(
        f"No checkpoint '{ref}': no such folder and no bundled checkpoint of that name.{listed} "
        "Pass a run folder (from `rql train --out`), a checkpoint folder inside its checkpoints/, "
        "a name from `rql list`, or a Hugging Face Hub id USER/NAME[@REVISION]."
    )
