"""Small click helpers, formatting and the thread rule shared by the command modules."""
import math
import os

import click


def int_list(ctx, param, value):
    """A click callback: "80,100" -> [80, 100] (None stays None)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 100 or 80,100") from None


def fmt_metrics(metrics: dict) -> str:
    keys = [k for k in ("test_acc", "test_loss", "val_acc", "val_loss", "acc", "loss", "solved_at") if k in metrics]

    def one(k):
        v = metrics[k]
        if k == "solved_at":
            return "not solved" if v is None else f"solved at step {v}"
        if not isinstance(v, float):
            return f"{k} {v}"
        return f"{k} {v:.4f}" if v == 0 or abs(v) >= 0.01 else f"{k} {v:.3g}"  # a copy loss of 5.9e-05, not 0.0001
    return ", ".join(one(k) for k in keys)


# --- threads -----------------------------------------------------------------------------------------------------
FLOPS_PER_THREAD = 8e6  # per-timestep work (whole batch) below which one more thread costs more than it saves


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_threads(work_flops: float, cores: int | None = None, load: float | None = None) -> int:
    """Threads for a computation of ``work_flops`` per timestep (batch × step_flops): one per FLOPS_PER_THREAD of
    work, at least 1, at most the cores this process may use minus the 1-minute load average (the cores other jobs
    keep busy), never below 1. Small models get 1 thread: their per-op work is too small to split, and a thread
    that waits for a busy core stalls every step (a quick psMNIST run: 64 s with torch's default on 2 busy cores,
    10 s with 1)."""
    cores = usable_cores() if cores is None else cores
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    free = max(1, cores - int(math.floor(load + 0.5)))
    return max(1, min(int(work_flops // FLOPS_PER_THREAD), free))


def set_torch_threads(threads: int | None, model_config: dict | None = None, batch: int = 1) -> int:
    """``--threads N``, or the rule of :func:`auto_threads` for ``batch`` sequences of this model; returns it."""
    import torch

    from ..models.flops import step_flops

    n = threads or auto_threads(batch * step_flops(model_config or {}))
    torch.set_num_threads(n)
    return n


def threads_option(what: str = "CPU threads for torch"):
    return click.option("--threads", type=click.IntRange(1), metavar="N",
                        help=f"{what} [default: from the model's work per step: 1 for small models; "
                             "see docs/CLI.md#threads].")



def provider_option(f):
    return click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                        help="ONNX Runtime execution provider (cuda needs the gpu extra: onnxruntime-gpu).")(f)


class RegistryChoice(click.Choice):
    """A choice among a registry's names (tasks, architectures, presets), read when first needed: the registries
    import torch, which ``wavexport --help`` should not pay for."""

    def __init__(self, load):
        self._load = load
        self.case_sensitive = True

    @property
    def choices(self):
        return tuple(self._load())


def task_names():
    from ..tasks import TASKS

    return TASKS


def arch_names():
    from ..models import ARCHS

    return ARCHS


def preset_names():
    from ..config import PRESETS

    return PRESETS
