"""Results tables from run folders (``rql report``): aggregate statistics, collection, figures.

    stats.py     IQM, mean, stratified bootstrap intervals, probability of improvement, profiles
    collect.py   run folders (plain, seed groups, sweeps) -> scores by task and by group
    figures.py   sample-efficiency curves and performance profiles
"""
