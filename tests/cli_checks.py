"""Helpers for tests that drive the `rql` app in-process and check how it refuses bad input."""

from __future__ import annotations

from typer.testing import CliRunner

from rql_cli.cli.app import app


def invoke(*args: str):
    """Run `rql ARGS...` in this process (exceptions are kept on the result, not raised)."""
    return CliRunner().invoke(app, list(args))


def assert_refused(result, *fragments: str) -> None:
    """Exit code 1 from one clean message holding the fragments (no exception but the exit, no traceback)."""
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
