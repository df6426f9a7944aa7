"""`python -m rql_cli` runs the `rql` command line."""

from rql_cli.cli.app import main

main()
