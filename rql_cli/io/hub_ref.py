"""Hub ids as users write them: ``user/name`` or ``user/name@revision``. Pure string work."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rql_cli.errors import HubError

# owner/name as the Hub spells them (letters, digits, '-', '_', '.'), then an optional @revision.
_HUB_REF = re.compile(
    r"(?P<repo_id>[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95})(?:@(?P<revision>[^\s@]+))?"
)


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
