"""Hyper-parameter sweeps on Optuna: the paper's grids (every table is the best of lr x gradient clip, and more),
run by any number of workers on one machine or many, each trial an ordinary run directory that resumes.

``spec``: what a sweep is (grid or ranges, fixed train options, objective); ``study``: its Optuna study, storage,
sampler and pruner; ``worker``: the loop that takes queued trials and trains them; ``launch``: a sweep folder and
local workers; ``report``: the table, the best trial, the heat map. docs/SCALING.md tells how to use it.
"""
from .spec import OBJECTIVES, Objective, Range, SweepError, SweepSpec, objective_for, parse_grid, parse_ranges

__all__ = ["OBJECTIVES", "Objective", "Range", "SweepError", "SweepSpec", "objective_for", "parse_grid",
           "parse_ranges"]
