"""Small click helpers and formatting shared by the command modules."""
import click


def int_list(ctx, param, value):
    """A click callback: "80,100" -> [80, 100] (None stays None)."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter("expected comma-separated integers, e.g. 100 or 80,100") from None


def fmt_duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def fmt_metrics(metrics: dict) -> str:
    keys = [k for k in ("test_acc", "test_loss", "val_acc", "val_loss", "acc", "loss", "solved_at") if k in metrics]
    return ", ".join(f"{k} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
                     for k in keys)


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
