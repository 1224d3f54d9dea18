"""``wavexport plot``: see the waves in a model's hidden state, measure their speed, compare training runs.

``waves`` and ``runs`` need only numpy and torch; ``figures`` draws with matplotlib (the optional ``plot`` extra).
Names are loaded on first use, so importing ``wavexport.plot.commands`` (as ``wavexport --help`` does) does not
import torch.
"""
import importlib

_WHERE = {
    **{n: "runs" for n in ("Run", "check_metric", "load_run", "run_labels")},
    **{n: "waves" for n in ("Event", "PlotError", "StateSource", "TorchSource", "OnnxSource", "WaveSpeed",
                            "channel_speeds", "describe_model", "input_events", "load_input", "open_source",
                            "parse_channels", "sample_caption", "task_sample", "task_sequence",
                            "wave_speed")},
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
