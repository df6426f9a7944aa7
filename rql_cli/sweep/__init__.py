"""Sweeps (``rql sweep``): datasets x tasks x ``--set`` grids x seeds, each an ordinary run folder.

    plan.py      the spec (flags or a TOML file), its expansion into runs, sweep.json
    execute.py   running the plan: in this process one run after another, or on Ray (local or a cluster)
"""
