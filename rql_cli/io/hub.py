"""Checkpoints on the Hugging Face Hub: push one as a single commit with a model card, pull one back.

Everything goes through ``huggingface_hub`` (tokens, ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_OFFLINE``,
the standard cache), imported inside the functions so that resolving a local checkpoint never pays
for it. A push stages exactly the files to publish in a temporary folder and sends them in one
``create_commit``: it lands whole or not at all. A pull verifies that the weights load and fit
config.json before anyone uses them.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rql_cli.errors import CheckpointError, HubError
from rql_cli.io.checkpoint import task_results

LIBRARY_NAME = "rql"
TAGS = ("reinforcement-learning", "offline-rl", "flow-matching", "rql", "ogbench")
VIDEO_SUFFIXES = (".mp4", ".gif")
# Files rql publishes; a push deletes the ones the new checkpoint lacks (a stale metrics.json or
# video from an earlier push must not describe this one) and leaves anything else in the repo alone.
MANAGED_FILES = (
    "config.json", "velocity.safetensors", "value.safetensors", "train_state.safetensors",
    "metrics.json", "README.md", *(f"rollout{suffix}" for suffix in VIDEO_SUFFIXES),
)
CITATION = """@article{oberai2026reversal,
  title   = {Reversal Q-Learning},
  author  = {Oberai and Park and Levine},
  journal = {arXiv preprint arXiv:2606.17551},
  year    = {2026}
}"""

# owner/name as the Hub spells them (letters, digits, '-', '_', '.'), then an optional @revision.
_HUB_REF = re.compile(
    r"(?P<repo_id>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})(?:@(?P<revision>[^\s@]+))?"
)
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class HubRef:
    """A Hub model repo and, optionally, a revision (branch, tag or commit id)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id


def parse_hub_ref(text: str) -> HubRef | None:
    """``'user/name'`` or ``'user/name@revision'`` as a HubRef; None when ``text`` is not shaped so."""
    match = _HUB_REF.fullmatch(text.strip())
    if match is None or ".." in match["repo_id"] or match["repo_id"].endswith((".git", ".")):
        return None
    return HubRef(match["repo_id"], match["revision"])


def require_hub_ref(text: str, revision: str | None = None) -> HubRef:
    """Parse ``text`` as a Hub id (RQLError if it is not one); ``revision`` fills in a missing @rev."""
    ref = parse_hub_ref(text)
    if ref is None:
        raise HubError(
            f"'{text}' is not a Hub repo id. Hub ids look like USER/NAME or USER/NAME@REVISION "
            "(letters, digits, '-', '_' and '.'), e.g. alice/rql-cube-single."
        )
    if revision and ref.revision and revision != ref.revision:
        raise HubError(
            f"Two revisions given for {ref.repo_id}: '@{ref.revision}' in the id and '{revision}' in "
            "--revision. Give one."
        )
    return HubRef(ref.repo_id, ref.revision or revision)


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
# Tokens, offline mode and the library's errors, turned into messages that say what to do
# ------------------------------------------------------------------------------------------


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def is_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now."""
    import os

    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def find_token(token: str | None = None) -> str:
    """``token``, else HF_TOKEN, else the login saved by `hf auth login`; HubError when none."""
    if token:
        return token
    from huggingface_hub import get_token

    try:
        found = get_token()
    except Exception as error:  # e.g. HF_OIDC_RESOURCE set but the exchange failed
        raise HubError(f"Could not get a Hugging Face token: {type(error).__name__}: {error}") from None
    if not found:
        raise HubError(
            "Pushing needs a Hugging Face token with write access, and none was found. Log in once with "
            "`hf auth login`, or set HF_TOKEN in the environment, or pass --token. Nothing was uploaded."
        )
    return found


def _scrub(text: str, token: str | None) -> str:
    """``text`` with the token masked: library messages must never carry it to the screen or a log."""
    if token:
        text = text.replace(token, "hf_***")
    return re.sub(r"(Bearer\s+)\S+", r"\1***", text)


def _is_connection_error(error: BaseException) -> bool:
    """True for transport failures of any HTTP client huggingface_hub may use (httpx2, httpx, requests)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectError", "ConnectionError", "TimeoutException", "Timeout", "TransportError",
                         "ConnectTimeout", "ReadTimeout", "NetworkError"})


def _status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _first_line(error: BaseException, token: str | None) -> str:
    """What the server said (huggingface_hub's ``server_message``), else the message's first line."""
    said = getattr(error, "server_message", None)
    lines = [line.strip() for line in (said or str(error)).splitlines() if line.strip()]
    return _scrub(lines[0] if lines else type(error).__name__, token)


# ------------------------------------------------------------------------------------------
# The model card
# ------------------------------------------------------------------------------------------


def read_checkpoint_metrics(folder: Path) -> dict[str, Any] | None:
    """metrics.json of a checkpoint folder, None when absent; CheckpointError when unreadable."""
    path = Path(folder) / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}). Measure the checkpoint again with "
            f"`rql eval --checkpoint {folder} --save`, or delete the file."
        ) from None
    if not isinstance(metrics, dict):
        raise CheckpointError(f"{path} does not hold an evaluation result (a JSON object).")
    return metrics


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def reproduce_command(meta: Any) -> str:
    """The `rql train` command that trains this checkpoint's run: the preset plus --set for what differs."""
    from rql_cli.config import make_config
    from rql_cli.errors import RQLError
    from rql_cli.names import parse_task_name

    parts = ["rql", "train", "--dataset", meta.dataset]
    try:
        if parse_task_name(meta.env_id).resolve_task() != parse_task_name(meta.dataset).resolve_task():
            parts += ["--task", str(parse_task_name(meta.env_id).resolve_task())]
    except RQLError:
        pass  # a name this rql does not know: the dataset name alone is the best we can say
    preset = make_config(meta.dataset).to_dict()
    for name, value in meta.config.to_dict().items():
        if name != "device" and preset.get(name) != value:  # the device is the machine's, not the recipe's
            parts += ["--set", f"{name}={json.dumps(value, separators=(',', ':'))}"]
    return " ".join(shlex.quote(part) for part in parts)


def _config_table(meta: Any) -> str:
    from rql_cli.config import FIELD_HELP, make_config

    preset = make_config(meta.dataset).to_dict()
    rows = ["| field | value | preset | meaning |", "|---|---|---|---|"]
    for name, value in meta.config.to_dict().items():
        default = preset.get(name)
        differs = json.dumps(default) if default != value else ""
        meaning = FIELD_HELP.get(name, "").replace("|", "\\|")
        rows.append(f"| `{name}` | `{json.dumps(value)}` | {f'`{differs}`' if differs else ''} | {meaning} |")
    return "\n".join(rows)


def build_model_card(
    meta: Any,
    metrics: dict[str, Any] | None,
    repo_id: str,
    *,
    files: list[str],
    video_name: str | None = None,
    revision: str | None = None,
) -> Any:
    """The README.md of a pushed checkpoint as a ``huggingface_hub.ModelCard``.

    Its metadata carries ``eval_results`` made from the measured metrics.json only; without one the
    card says the checkpoint is not evaluated yet and how to measure it.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from rql_cli.config import env_family

    results = task_results(metrics)
    name = repo_id.split("/")[-1]
    load_ref = f"{repo_id}@{revision}" if revision and revision != "main" else repo_id
    eval_results = []
    for result in results:
        env_id = result.get("env_id", meta.env_id)
        common = dict(
            task_type="reinforcement-learning", task_name="Offline reinforcement learning",
            dataset_type=result.get("dataset_name") or meta.dataset, dataset_name=env_id,
            dataset_config=f"task{result['task']}" if result.get("task") is not None else None,
        )
        eval_results.append(EvalResult(
            **common, metric_type="success_rate", metric_name="success rate",
            metric_value=round(float(result["success_rate"]), 4),
            metric_args={"episodes": int(result["episodes"]), "ci95": [round(float(x), 4) for x in result["success_ci95"]]},
        ))
        if "mean_return" in result:
            eval_results.append(EvalResult(
                **common, metric_type="mean_return", metric_name="mean return",
                metric_value=round(float(result["mean_return"]), 3),
                metric_args={"episodes": int(result["episodes"])},
            ))
    family = env_family(meta.dataset)
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=[*TAGS, *([family] if family else [])],
        pipeline_tag="reinforcement-learning",
        model_name=name,
        eval_results=eval_results or None,
    )

    lines = [
        f"# {name}",
        "",
        f"A **Reversal Q-Learning** (RQL) agent: a flow-matching policy over action chunks of "
        f"{meta.config.horizon} steps, trained offline on the OGBench dataset `{meta.dataset}` and "
        f"evaluated in `{meta.env_id}`. Made with `rql` (the rql-cli package).",
        "",
        "## Results",
        "",
    ]
    if results:
        lines += ["| task | environment | success rate | 95% CI | episodes |", "|---|---|---|---|---|"]
        for result in results:
            low, high = result["success_ci95"]
            lines.append(
                f"| {result.get('task', '')} | `{result.get('env_id', meta.env_id)}` | "
                f"{_pct(result['success_rate'])} | [{_pct(low)}, {_pct(high)}] | {result['episodes']} |"
            )
        first = results[0]
        lines += [
            "",
            f"Measured by `rql eval` with the EMA policy (95% Wilson interval over the episodes; episode "
            f"seeds are in `metrics.json`), ogbench {first.get('ogbench_version', '?')}, success timing "
            f"`{first.get('success_timing', meta.success_timing)}`.",
        ]
    else:
        lines += [
            "**Not evaluated yet.** This checkpoint carries no `metrics.json`, so no success rate is "
            "claimed. Measure it and push again:",
            "",
            "```bash",
            "rql eval --checkpoint FOLDER --save",
            "```",
        ]
    lines += [
        "",
        "## Use it",
        "",
        "```bash",
        f"rql eval --checkpoint {load_ref}          # download into the Hub cache, then evaluate",
        f"rql pull {load_ref}                       # download and verify only",
        f"rql rollout --checkpoint {load_ref} --render",
        "```",
        "",
        "```python",
        "from rql_cli.io.hub import pull_checkpoint",
        "from rql_cli.io.checkpoint import load_agent",
        "",
        f'agent, meta = load_agent(pull_checkpoint("{load_ref}"))',
        "```",
        "",
    ]
    if video_name:
        lines += ["## Rollout", "", f"[{video_name}]({video_name})", ""]
    lines += [
        "## Training",
        "",
        f"- training steps: {meta.step:,}" + (f" (of a {meta.config.steps:,}-step run)" if meta.config.steps > meta.step else ""),
        f"- dataset: `{meta.dataset}`; environment: `{meta.env_id}`; observations {meta.obs_dim}, actions {meta.action_dim}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items())),
        "",
        "Reproduce the run (add `--dataset-dir DIR` where the dataset files are; "
        "`rql data generate` makes them):",
        "",
        "```bash",
        reproduce_command(meta),
        "```",
        "",
        "### Config",
        "",
        "The preset column shows the task preset's value where this run differs from it.",
        "",
        _config_table(meta),
        "",
        "## Files",
        "",
        *[f"- `{name}`" for name in sorted(files)],
        "",
        "Weights are safetensors (no pickle): loading them never runs code.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------
# Push
# ------------------------------------------------------------------------------------------


def _stage(folder: Path, staging: Path, with_train_state: bool, video_path: Path | None) -> tuple[list[str], str | None]:
    """Copy what is published into ``staging``; returns the file names and the video's name."""
    from rql_cli.io.checkpoint import REQUIRED_FILES, TRAIN_STATE_FILE

    names = list(REQUIRED_FILES)
    if (folder / "metrics.json").is_file():
        names.append("metrics.json")
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
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    with_train_state: bool = False,
    video_path: Path | None = None,
) -> PushResult:
    """Publish checkpoint ``folder`` to the Hub model repo ``repo_id`` in one commit.

    Uploads config.json, the two weight files, metrics.json when present, train_state.safetensors only
    with ``with_train_state``, the video when given, and a generated README.md model card. Creates the
    repo (and the branch ``revision``) when missing. The token is checked before any network call
    and never appears in messages. A failure leaves the repo as it was: no partial commit.
    """
    from rql_cli.io.checkpoint import load_agent

    folder = Path(folder)
    ref = require_hub_ref(repo_id, revision)
    branch = ref.revision or "main"
    if _COMMIT_ID.fullmatch(branch):
        raise HubError(f"A push goes to a branch, not to the commit {branch}. Pass a branch name as --revision.")
    _, meta = load_agent(folder, "cpu")  # never publish what `rql pull` would reject
    metrics = read_checkpoint_metrics(folder)
    token = find_token(token)
    if is_offline():
        raise HubError("HF_HUB_OFFLINE is set, and pushing needs the network. Unset HF_HUB_OFFLINE to push. Nothing was uploaded.")

    started = time.perf_counter()  # staging, the card and the upload; not the checks above
    with tempfile.TemporaryDirectory(prefix="rql-push-") as tmp:
        staging = Path(tmp)
        names, video_name = _stage(folder, staging, with_train_state, video_path)
        card = build_model_card(
            meta, metrics, ref.repo_id, files=[*names, "README.md"], video_name=video_name, revision=branch,
        )
        card.save(staging / "README.md")
        names.append("README.md")
        size = sum((staging / name).stat().st_size for name in names)
        message = commit_message or (
            f"rql: {meta.dataset} step {meta.step:,}"
            + (f", success {_pct(task_results(metrics)[0]['success_rate'])}" if task_results(metrics) else ", not evaluated")
        )
        info, deleted, repo_url = _commit(ref.repo_id, branch, staging, names, message, token, private)
    return PushResult(
        repo_id=ref.repo_id, revision=branch, commit_oid=info.oid, commit_url=info.commit_url,
        repo_url=str(repo_url), files=sorted(names), deleted=deleted, size_bytes=size,
        seconds=time.perf_counter() - started, evaluated=bool(task_results(metrics)),
    )


def _commit(repo_id: str, branch: str, staging: Path, names: list[str], message: str, token: str,
            private: bool) -> tuple[Any, list[str], str]:
    """create_repo, create_branch when needed, then ONE create_commit; library errors become HubError."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(token=token, library_name=LIBRARY_NAME)
    endpoint = api.endpoint
    nothing = "Nothing was uploaded."
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, revision=branch))
        deleted = sorted((remote & set(MANAGED_FILES)) - set(names))
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(staging / name)) for name in names]
        operations += [CommitOperationDelete(path_in_repo=name) for name in deleted]
        # upload_folder is not used on purpose: with hf_xet installed it may split a folder into
        # several commits, and a push must be one.
        info = api.create_commit(repo_id, operations=operations, commit_message=message, revision=branch)
    except (RepositoryNotFoundError, HfHubHTTPError) as error:
        status = _status(error)
        if status in (401, 403) or isinstance(error, RepositoryNotFoundError):
            raise HubError(
                f"The Hub at {endpoint} did not let this token write to {repo_id} ({status}: "
                f"{_first_line(error, token)}). Use a token with write access to '{repo_id.split('/')[0]}': "
                f"log in with `hf auth login`, set HF_TOKEN, or pass --token. {nothing}"
            ) from None
        if isinstance(error, RevisionNotFoundError):
            raise HubError(f"{repo_id} has no branch '{branch}' and it could not be made. {nothing}") from None
        raise HubError(
            f"The Hub at {endpoint} refused the push to {repo_id} ({status}: {_first_line(error, token)}). {nothing}"
        ) from None
    except ValueError as error:  # e.g. metadata the Hub rejects
        raise HubError(f"The push to {repo_id} was refused: {_scrub(str(error), token)}. {nothing}") from None
    except Exception as error:
        if _is_connection_error(error):
            raise HubError(
                f"Could not reach the Hub at {endpoint} ({type(error).__name__}: {_scrub(str(error), token)}). "
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
    """Download a checkpoint repo (``user/name`` or ``user/name@revision``) and verify it; its folder.

    Goes through ``snapshot_download``: the standard cache under HF_HOME (or ``local_dir``), the
    endpoint of HF_ENDPOINT, the login or HF_TOKEN for private repos. With HF_HUB_OFFLINE set only the
    cache is used, and a repo that is not there fails at once. Every weight file is loaded on the
    CPU and checked against config.json (CheckpointError names the file and what is wrong); pass
    ``verify=False`` only to call ``verify_checkpoint`` yourself.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    ref = require_hub_ref(repo_id, revision)
    offline = is_offline()
    endpoint = _endpoint()
    quiet_before = are_progress_bars_disabled()
    disable_progress_bars()  # the CLI draws its own status; tqdm bars would tear it
    try:
        path = snapshot_download(
            ref.repo_id, revision=ref.revision, local_dir=str(local_dir) if local_dir else None,
            token=token, local_files_only=offline, library_name=LIBRARY_NAME,
        )
    except RevisionNotFoundError:
        raise HubError(
            f"{ref.repo_id} on the Hub at {endpoint} has no revision '{ref.revision}'. Use a branch, tag or "
            f"commit id of the repo (see its history on the Hub), or drop @{ref.revision} for the latest."
        ) from None
    except (RepositoryNotFoundError, GatedRepoError):
        raise HubError(
            f"No model repo '{ref.repo_id}' on the Hub at {endpoint}, or it is private and this token "
            "cannot read it. Check the id (USER/NAME); for a private repo log in with `hf auth login` or "
            "set HF_TOKEN."
        ) from None
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        if offline:
            raise HubError(
                f"We are offline (HF_HUB_OFFLINE is set) and {ref} is not in the Hub cache "
                f"({local_dir or constants.HF_HUB_CACHE}). Unset HF_HUB_OFFLINE and pull it once with "
                f"`rql pull {ref}`; later offline runs use the cached copy."
            ) from None
        raise HubError(
            f"Could not reach the Hub at {endpoint}, and {ref} is not in the cache "
            f"({local_dir or constants.HF_HUB_CACHE}). Check the network or HF_ENDPOINT, then try again."
        ) from None
    except HfHubHTTPError as error:
        raise HubError(
            f"The Hub at {endpoint} refused to send {ref} ({_status(error)}: {_first_line(error, token)}). "
            "For a private repo log in with `hf auth login` or set HF_TOKEN."
        ) from None
    finally:
        if not quiet_before:
            enable_progress_bars()
    folder = Path(path)
    if verify:
        verify_checkpoint(folder, source=str(ref))
    return folder


def verify_checkpoint(folder: Path, *, source: str | None = None) -> Any:
    """Load every weight file on the CPU and check the dims against config.json; returns the meta."""
    from rql_cli.io.checkpoint import load_agent

    try:
        _, meta = load_agent(folder, "cpu")
    except CheckpointError as error:
        where = f" (downloaded from {source})" if source else ""
        raise CheckpointError(f"{error}{where}") from None
    return meta
