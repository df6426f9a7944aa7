"""huggingface_hub as rql uses it: a timeout on every request, the token, offline mode, and what the
library's errors mean (by class name, whichever HTTP client it runs on).

``huggingface_hub`` is imported inside the functions, so that resolving a local checkpoint never pays
for it.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from rql_cli.errors import HubError

if TYPE_CHECKING:
    import httpx2


def apply_timeouts() -> float:
    """Give every request huggingface_hub makes a timeout; returns the read timeout in seconds.

    huggingface_hub's shared client waits for ever by default, and several of its calls pass
    ``timeout=None`` explicitly, so an endpoint that accepts the connection and never answers
    would hang a push or a pull. We install (through ``set_client_factory``) a client of the same
    library that uses its own timeouts wherever none is given. They honour the library's settings:
    HF_HUB_ETAG_TIMEOUT for connecting, HF_HUB_DOWNLOAD_TIMEOUT for each read and write (10 s each
    by default). The library still retries a timed-out request a few times with backoff.
    """
    from huggingface_hub import constants, get_session, set_client_factory

    read = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
    session = get_session()
    timeout = type(session.timeout)(read, connect=float(constants.HF_HUB_ETAG_TIMEOUT))
    if getattr(session, "rql_timeouts", None) == timeout:
        return read
    base, hooks = type(session), session.event_hooks

    # The base is whichever client class the library made its session of, known only at run time.
    class ClientWithTimeouts(base):  # type: ignore[valid-type, misc]
        rql_timeouts = timeout

        def build_request(self, *args: Any, **kwargs: Any) -> httpx2.Request:
            if kwargs.get("timeout", "unset") is None:
                kwargs["timeout"] = self.timeout
            return super().build_request(*args, **kwargs)

    set_client_factory(lambda: ClientWithTimeouts(event_hooks=hooks, follow_redirects=True, timeout=timeout))
    return read


_TIMEOUTS = {"TimeoutException", "ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout", "Timeout"}
_TRANSPORT_FAILURES = _TIMEOUTS | {"ConnectError", "ConnectionError", "TransportError", "NetworkError"}


def error_kinds(error: BaseException) -> set[str]:
    """Class names in the error's MRO: matches httpx2, httpx and requests errors alike, by name."""
    return {cls.__name__ for cls in type(error).__mro__}


def timed_out(error: BaseException) -> bool:
    return bool(error_kinds(error) & _TIMEOUTS)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def is_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now."""
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


def scrub(text: str, token: str | None) -> str:
    """``text`` with the token masked: library messages must never carry it to the screen or a log."""
    if token:
        text = text.replace(token, "hf_***")
    return re.sub(r"(Bearer\s+)\S+", r"\1***", text)


def is_connection_error(error: BaseException) -> bool:
    """True for transport failures of any HTTP client huggingface_hub may use (httpx2, httpx, requests)."""
    return bool(error_kinds(error) & _TRANSPORT_FAILURES)


def http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def first_line(error: BaseException, token: str | None) -> str:
    """What the server said (huggingface_hub's ``server_message``), else the message's first line."""
    said = getattr(error, "server_message", None)
    lines = [line.strip() for line in (said or str(error)).splitlines() if line.strip()]
    return scrub(lines[0] if lines else type(error).__name__, token)
