"""mkdocs hooks for the docs site (``mkdocs.yml``): two pages made at build time, so neither can drift.

- ``quickstart.md`` is README.md, its links into docs/ made site-relative;
- ``commands.md`` is every command's help, generated from the Typer app by Typer's own doc writer
  (what ``typer rql_cli.cli.app utils docs`` prints), so the site says what ``--help`` says.

Links from docs/ pages to the README become links to the quickstart; links to source files become
their paths as code (the site holds no source).
"""

from __future__ import annotations

import re
from pathlib import Path

import typer
from mkdocs.structure.files import File
from typer.cli import get_docs_for_click

ROOT = Path(__file__).resolve().parents[1]


def commands_markdown() -> str:
    """Markdown of `rql` and every subcommand's usage, options and help."""
    from rql_cli.cli.app import app

    command = typer.main.get_command(app)
    body = get_docs_for_click(obj=command, ctx=typer.Context(command), name="rql", title="Commands")
    return body.replace("`rql`\n", "`rql`\n", 1)


def readme_for_site() -> str:
    """README.md with ``docs/x.md`` links as ``x.md`` and other repository links as code."""
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"\]\(docs/([^)]+)\)", r"](\1)", text)
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]+)\)", r"\1 (`\2`)", text)


def on_files(files, config):  # noqa: ANN001, ANN201 (mkdocs' hook signature)
    files.append(File.generated(config, "quickstart.md", content=readme_for_site()))
    files.append(File.generated(config, "commands.md", content=commands_markdown()))
    return files


def on_page_markdown(markdown, page, config, files):  # noqa: ANN001, ANN201, ARG001
    markdown = re.sub(r"\]\(\.\./README\.md(#[^)]*)?\)", lambda m: f"](quickstart.md{m.group(1) or ''})", markdown)
    return re.sub(r"\[([^\]]+)\]\(\.\./([^)]+)\)", r"\1 (`\2`)", markdown)
