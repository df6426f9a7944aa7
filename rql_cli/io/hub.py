"""Checkpoints on the Hugging Face Hub: push one as a single commit with a model card, pull one back.

Everything goes through ``huggingface_hub`` (tokens, ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``,
the standard cache), imported inside the functions so that resolving a local checkpoint never pays
for it. A push stages exactly the files to publish in a temporary folder and sends them in one
``create_commit``: it lands whole or not at all. A pull verifies that the weights load and fit
config.json before anyone uses them.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rql_cli.errors import CheckpointError, HubError
from rql_cli.io.checkpoint_files import REQUIRED_FILES, TRAIN_STATE_FILE, VIDEO_SUFFIXES
from rql_cli.io.checkpoint_meta import CheckpointMeta
from rql_cli.io.hub_client import (
    apply_timeouts,
    find_token,
    first_line,
    http_status,
    hub_endpoint,
    is_connection_error,
    is_offline,
    scrub,
    timed_out,
)
from rql_cli.io.hub_ref import require_hub_ref
from rql_cli.io.metrics import METRICS_FILE, read_metrics
from rql_cli.io.model_card import (
    EVIDENCE_FILE,
    LIBRARY_NAME,
    build_model_card,
    pct,
    read_evidence,
)
from rql_cli.io.run_layout import CURVES_FILE
from rql_cli.io.run_record import record_of_checkpoint

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

CARD_FILE = "README.md"
"""The model card: the Hub shows a repo's README.md as its page."""
OPTIONAL_FILES = (EVIDENCE_FILE, CURVES_FILE)
"""Published when the checkpoint folder has them (the bundled agents do)."""
# Files rql publishes; a push deletes the ones the new checkpoint lacks (a stale metrics.json or
# video from an earlier push must not describe this one) and leaves anything else in the repo alone.
MANAGED_FILES = (
    *REQUIRED_FILES, TRAIN_STATE_FILE, METRICS_FILE, CARD_FILE,
    *(f"rollout{suffix}" for suffix in VIDEO_SUFFIXES), *OPTIONAL_FILES,
)
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")


@dataclass
class PushResult:
    """What one push made: a single commit holding ``files``."""

    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    repo_url: str
    files: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    size_bytes: int = 0
    seconds: float = 0.0
    evaluated: bool = False


# ------------------------------------------------------------------------------------------
# Push
# ------------------------------------------------------------------------------------------


def check_can_push(repo_id: str, revision: str | None, token: str | None) -> tuple[str, str]:
    """Refuse at once, before any slow work, a push that cannot succeed; returns (token, branch).

    Checks the repo id, that the revision is a branch (not a commit), that a token exists and that
    HF_HUB_OFFLINE is not set.
    """
    ref = require_hub_ref(repo_id, revision)
    branch = ref.revision or "main"
    if _COMMIT_ID.fullmatch(branch):
        raise HubError(f"A push goes to a branch, not to the commit {branch}. Pass a branch name as --revision.")
    token = find_token(token)
    if is_offline():
        raise HubError(
            "HF_HUB_OFFLINE is set, and pushing needs the network. Unset HF_HUB_OFFLINE to push. "
            "Nothing was uploaded."
        )
    return token, branch


def _stage(
    folder: Path, staging: Path, with_train_state: bool, video_path: Path | None
) -> tuple[list[str], str | None]:
    """Copy what is published into ``staging``; returns the file names and the video's name."""
    names = list(REQUIRED_FILES)
    names += [name for name in (METRICS_FILE, *OPTIONAL_FILES) if (folder / name).is_file()]
    if with_train_state:
        if not (folder / TRAIN_STATE_FILE).is_file():
            raise CheckpointError(
                f"--with-train-state asks for {folder / TRAIN_STATE_FILE}, which this checkpoint does not "
                "have. Push without --with-train-state."
            )
        names.append(TRAIN_STATE_FILE)
    for name in names:
        shutil.copyfile(folder / name, staging / name)
    video_name = None
    if video_path is not None:
        video_path = Path(video_path)
        if not video_path.is_file():
            raise HubError(f"The video {video_path} does not exist.")
        suffix = video_path.suffix.lower()
        if suffix not in VIDEO_SUFFIXES:
            raise HubError(f"The video {video_path} should be .mp4 or .gif.")
        video_name = f"rollout{suffix}"
        shutil.copyfile(video_path, staging / video_name)
        names.append(video_name)
    return names, video_name


def push_checkpoint(
    folder: Path,
    meta: CheckpointMeta,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    with_train_state: bool = False,
    video_path: Path | None = None,
) -> PushResult:
    """Publish checkpoint ``folder`` (already loaded, so known to load: ``meta`` is its config.json)
    to the Hub model repo ``repo_id`` in one commit.

    Uploads config.json, the two weight files, metrics.json when present, train_state.safetensors only
    with ``with_train_state``, the video when given, and a generated README.md model card. Creates the
    repo (and the branch ``revision``) when missing. The token is checked before any network call
    and never appears in messages. A failure leaves the repo as it was: no partial commit.
    """
    folder = Path(folder)
    token, branch = check_can_push(repo_id, revision, token)
    repo = require_hub_ref(repo_id, revision).repo_id
    report = read_metrics(folder)
    evaluated = bool(report and report.tasks)
    started = time.perf_counter()  # staging, the card and the upload; not the checks above
    with tempfile.TemporaryDirectory(prefix="rql-push-") as tmp:
        staging = Path(tmp)
        names, video_name = _stage(folder, staging, with_train_state, video_path)
        record = record_of_checkpoint(folder)
        card = build_model_card(
            meta, report, repo, files=[*names, CARD_FILE], video_name=video_name, revision=branch,
            evidence=read_evidence(folder), run=record.config if record else None,
        )
        card.save(staging / CARD_FILE)
        names.append(CARD_FILE)
        size = sum((staging / name).stat().st_size for name in names)
        success = f", success {pct(report.tasks[0].success_rate)}" if report and report.tasks else ", not evaluated"
        message = commit_message or f"rql: {meta.dataset} step {meta.step:,}{success}"
        info, deleted, repo_url = _commit(repo, branch, staging, names, message, token, private)
    return PushResult(
        repo_id=repo, revision=branch, commit_oid=info.oid, commit_url=info.commit_url,
        repo_url=str(repo_url), files=sorted(names), deleted=deleted, size_bytes=size,
        seconds=time.perf_counter() - started, evaluated=evaluated,
    )


def _commit(repo_id: str, branch: str, staging: Path, names: list[str], message: str, token: str,
            private: bool) -> tuple[CommitInfo, list[str], str]:
    """create_repo, create_branch when needed, then ONE create_commit; library errors become HubError."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    read_timeout = apply_timeouts()
    api = HfApi(token=token, library_name=LIBRARY_NAME)
    endpoint = api.endpoint
    nothing = "Nothing was uploaded."
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, revision=branch))
        deleted = sorted((remote & set(MANAGED_FILES)) - set(names))
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staging / name)) for name in names
        ]
        operations += [CommitOperationDelete(path_in_repo=name) for name in deleted]
        # upload_folder is not used on purpose: with hf_xet installed it may split a folder into
        # several commits, and a push must be one.
        info = api.create_commit(repo_id, operations=operations, commit_message=message, revision=branch)
    except (RepositoryNotFoundError, HfHubHTTPError) as error:
        status = http_status(error)
        if status in (401, 403) or isinstance(error, RepositoryNotFoundError):
            raise HubError(
                f"The Hub at {endpoint} did not let this token write to {repo_id} ({status}: "
                f"{first_line(error, token)}). Use a token with write access to '{repo_id.split('/')[0]}': "
                f"log in with `hf auth login`, set HF_TOKEN, or pass --token. {nothing}"
            ) from None
        if isinstance(error, RevisionNotFoundError):
            raise HubError(f"{repo_id} has no branch '{branch}' and it could not be made. {nothing}") from None
        raise HubError(
            f"The Hub at {endpoint} refused the push to {repo_id} ({status}: {first_line(error, token)}). {nothing}"
        ) from None
    except ValueError as error:  # e.g. metadata the Hub rejects
        raise HubError(f"The push to {repo_id} was refused: {scrub(str(error), token)}. {nothing}") from None
    except Exception as error:
        if timed_out(error):
            raise HubError(
                f"The Hub at {endpoint} did not answer within {read_timeout:.0f} s (HF_HUB_DOWNLOAD_TIMEOUT), "
                f"even after retries. Check the network or HF_ENDPOINT, or raise HF_HUB_DOWNLOAD_TIMEOUT. {nothing}"
            ) from None
        if is_connection_error(error):
            raise HubError(
                f"Could not reach the Hub at {endpoint} ({type(error).__name__}: {scrub(str(error), token)}). "
                f"Check the network or HF_ENDPOINT. {nothing}"
            ) from None
        raise
    return info, deleted, str(repo_url)


# ------------------------------------------------------------------------------------------
# Pull
# ------------------------------------------------------------------------------------------


def pull_checkpoint(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: Path | str | None = None,
    token: str | None = None,
    verify: bool = True,
) -> Path:
    """Download a checkpoint repo (``user/name`` or ``user/name@revision``); returns its folder.

    Goes through ``snapshot_download``: the standard cache under HF_HOME (or ``local_dir``), the
    endpoint of HF_ENDPOINT, the login or HF_TOKEN for private repos. With HF_HUB_OFFLINE set only the
    cache is used, and a repo that is not there fails at once. With ``verify`` every weight file is
    loaded on the CPU and checked against config.json; ``rql_cli.io.resolve.load_checkpoint`` passes
    ``verify=False`` because its own load (on the device asked for) is that check.
    """
    ref = require_hub_ref(repo_id, revision)
    path = _snapshot(ref.repo_id, ref.revision, local_dir, token)
    if verify:
        verify_checkpoint(path, source=str(ref))
    return path


def _snapshot(repo_id: str, revision: str | None, local_dir: Path | str | None, token: str | None) -> Path:
    """``snapshot_download`` with progress bars off and every library error turned into a HubError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    apply_timeouts()
    quiet_before = are_progress_bars_disabled()
    disable_progress_bars()  # the CLI draws its own status; tqdm bars would tear it
    try:
        return Path(snapshot_download(
            repo_id, revision=revision, local_dir=str(local_dir) if local_dir else None,
            token=token, local_files_only=is_offline(), library_name=LIBRARY_NAME,
        ))
    except Exception as error:
        raise _pull_error(error, repo_id, revision, local_dir, token) from None
    finally:
        if not quiet_before:
            enable_progress_bars()


def _pull_error(
    error: Exception, repo_id: str, revision: str | None, local_dir: Path | str | None, token: str | None
) -> Exception:
    """The HubError that says what to do about a failed download (other errors pass through)."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, ref = hub_endpoint(), f"{repo_id}@{revision}" if revision else repo_id
    cache = local_dir or constants.HF_HUB_CACHE
    if isinstance(error, RevisionNotFoundError):
        return HubError(
            f"{repo_id} on the Hub at {endpoint} has no revision '{revision}'. Use a branch, tag or "
            f"commit id of the repo (see its history on the Hub), or drop @{revision} for the latest."
        )
    if isinstance(error, (RepositoryNotFoundError, GatedRepoError)):
        return HubError(
            f"No model repo '{repo_id}' on the Hub at {endpoint}, or it is private and this token "
            "cannot read it. Check the id (USER/NAME); for a private repo log in with `hf auth login` or "
            "set HF_TOKEN."
        )
    if isinstance(error, LocalEntryNotFoundError):
        if is_offline():
            return HubError(
                f"We are offline (HF_HUB_OFFLINE is set) and {ref} is not in the Hub cache ({cache}). "
                f"Unset HF_HUB_OFFLINE and pull it once with `rql pull {ref}`; later offline runs use "
                "the cached copy."
            )
        return HubError(
            f"Could not reach the Hub at {endpoint}, and {ref} is not in the cache ({cache}). "
            "Check the network or HF_ENDPOINT, then try again."
        )
    if isinstance(error, HfHubHTTPError):
        return HubError(
            f"The Hub at {endpoint} refused to send {ref} ({http_status(error)}: {first_line(error, token)}). "
            "For a private repo log in with `hf auth login` or set HF_TOKEN."
        )
    if timed_out(error) or is_connection_error(error):
        return HubError(
            f"The Hub at {endpoint} did not answer for {ref} ({type(error).__name__}), even after retries; "
            f"{ref} is not in the cache ({cache}). Check the network or HF_ENDPOINT, or raise "
            "HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT."
        )
    return error


def verify_checkpoint(folder: Path, *, source: str | None = None) -> CheckpointMeta:
    """Load every weight file on the CPU and check the dims against config.json; returns the meta."""
    from rql_cli.io.checkpoint import load_agent  # torch: only once there is something to load

    try:
        _, meta = load_agent(folder, "cpu")
    except CheckpointError as error:
        where = f" (downloaded from {source})" if source else ""
        raise CheckpointError(f"{error}{where}") from None
    return meta
