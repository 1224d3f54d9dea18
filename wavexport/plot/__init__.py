"""``wavexport plot``: see the waves in a model's hidden state, measure their speed, compare training runs.

``waves`` and ``runs`` need only numpy and torch; ``figures`` draws with matplotlib (the optional ``plot`` extra).
"""
from .runs import Run, check_metric, load_run, run_labels
from .waves import (Event, PlotError, StateSource, TorchSource, WaveSpeed, channel_speeds, describe_model,
                    input_events, load_input, open_source, parse_channels, task_sequence, wave_speed)

__all__ = ["Event", "PlotError", "StateSource", "TorchSource", "WaveSpeed", "channel_speeds", "describe_model",
           "input_events", "load_input", "open_source", "parse_channels", "task_sequence", "wave_speed", "Run",
           "check_metric", "load_run", "run_labels"]
