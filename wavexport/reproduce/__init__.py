"""``wavexport reproduce``: the paper's experiments as data, run as ordinary run directories, reported beside the
paper's numbers. ``experiments`` says what to run, ``runner`` runs it (resumably, side by side), ``report`` makes
the tables and figures."""
from .experiments import EXPERIMENTS, SCALES, Experiment, RunSpec, get_experiment

__all__ = ["EXPERIMENTS", "SCALES", "Experiment", "RunSpec", "get_experiment"]
