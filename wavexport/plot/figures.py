"""The matplotlib drawings: space-time diagrams, the ring animation, training curves.

matplotlib is imported inside the functions (it is the optional ``plot`` extra), and only through ``Figure`` and
the Agg canvas: no pyplot, so nothing here changes a user's backend or keeps global figure state.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.io import atomic_write
from .runs import Run
from .waves import Event, PlotError, WaveSpeed

MISSING = "plotting needs matplotlib: pip install 'wavexport[plot]'"
SPEED_COLOR = "#00d5ff"  # cyan reads on the dark end of magma and on white


def _mpl():
    """(Figure, FigureCanvasAgg), or the one-line install hint."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError(MISSING) from None
    return Figure, FigureCanvasAgg


def new_figure(size_px: tuple[int, int], dpi: int):
    Figure, FigureCanvasAgg = _mpl()
    w, h = size_px
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int) -> Path:
    """Write ``fig`` in the format its suffix names (png, pdf, svg), through a temp file and a rename."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in fig.canvas.get_supported_filetypes():
        raise PlotError(f"{path}: cannot write a {fmt or 'suffix-less'} file; use .png, .pdf or .svg")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=dpi))
    return path


def _scale(values: np.ndarray) -> tuple[float, float, str]:
    """(vmin, vmax, cmap): 0..p99.5 on magma for ReLU activity, symmetric on RdBu for signed states. The
    percentile keeps one ever-growing unit (an identity-init integrator) from washing out everything else."""
    signed = values.min() < -1e-6 * max(1.0, float(np.abs(values).max()))
    top = float(np.percentile(np.abs(values), 99.5)) if values.size else 0.0
    top = top if top > 0 else (float(np.abs(values).max()) or 1.0)
    return (-top, top, "RdBu_r") if signed else (0.0, top, "magma")


def _input_rows(task_name: str | None, n_in: int) -> list[str] | None:
    return {"adding": ["value", "marker"]}.get(task_name or "") or (["pixel"] if n_in == 1 else None)


# --- space-time diagram ------------------------------------------------------------------------------------------
def waves_figure(states: np.ndarray, inputs: np.ndarray, channels: list[int], *, layout: str = "ring",
                 events: list[Event] = (), speeds: dict[int, WaveSpeed] | None = None, title: str = "",
                 task_name: str | None = None, size_px: tuple[int, int] | None = None, dpi: int = 120):
    """Input strip on top, then one space-time image per channel: time across, ring position up. A wave moving
    +1 unit per step is a stripe rising one unit per step; a wave-free state is horizontal bands."""
    T, n_in = inputs.shape
    n = len(channels)
    if size_px is None:
        size_px = (1100, 150 + 240 * n + 90)
    fig = new_figure(size_px, dpi)
    strip_h = 0.45 if n_in <= 12 else 0.8
    gs = fig.add_gridspec(1 + n, 2, height_ratios=[strip_h] + [1.0] * n, width_ratios=[60, 1])
    ax_in = fig.add_subplot(gs[0, 0])
    fig.add_subplot(gs[0, 1]).set_axis_off()
    extent_t = (-0.5, T - 0.5)

    # input strip
    lo, hi = float(min(0.0, np.percentile(inputs, 1))), float(np.percentile(inputs, 99.5))
    ax_in.imshow(inputs.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest",
                 vmin=lo, vmax=hi if hi > lo else lo + 1, extent=(*extent_t, -0.5, n_in - 0.5))
    rows = _input_rows(task_name, n_in)
    if rows:
        ax_in.set_yticks(range(n_in), rows, fontsize=8)
    else:
        ax_in.set_yticks([0, n_in - 1])
        ax_in.set_ylabel("input", fontsize=9)
    ax_in.tick_params(labelbottom=False)
    ax_in.set_xlim(*extent_t)

    axes = []
    for i, c in enumerate(channels):
        ax = fig.add_subplot(gs[1 + i, 0], sharex=ax_in)
        cax = fig.add_subplot(gs[1 + i, 1])
        img = states[:, c, :].T  # [N, T]
        vmin, vmax, cmap = _scale(img)
        im = ax.imshow(img, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest",
                       extent=(*extent_t, -0.5, img.shape[0] - 0.5))
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=7)
        if layout == "ring":
            name, ylabel = f"channel {c}", "ring position"
        else:
            name, ylabel = f"hidden units (index order, {img.shape[0]} units)", "unit"
        sp = (speeds or {}).get(c)
        if sp is not None:
            what = "wave speed" if layout == "ring" else "best lag"
            name += f"   ·   {what} {sp.signed} unit/step  (r = {sp.strength:.2f})"
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelbottom=(i == n - 1), labelsize=8)
        axes.append(ax)
    axes[-1].set_xlabel("time step", fontsize=9)
    cax.set_ylabel("activity", fontsize=8)

    _draw_events(ax_in, axes, events, T)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _draw_events(ax_in, axes, events, T):
    from matplotlib.transforms import blended_transform_factory

    top = blended_transform_factory(ax_in.transData, ax_in.transAxes)
    for ev in events:
        if ev.kind == "symbol":
            ax_in.text(ev.t, 1.04, ev.label, transform=top, ha="center", va="bottom", fontsize=8,
                       color="#c0392b", fontweight="bold")
        elif ev.kind == "window":
            ax_in.axvspan(ev.t - 0.5, (ev.end if ev.end is not None else T - 1) + 0.5, color="#2e86de", alpha=0.18)
            mid = (ev.t + (ev.end if ev.end is not None else T - 1)) / 2
            ax_in.text(mid, 1.04, ev.label, transform=top, ha="center", va="bottom", fontsize=8, color="#2e86de")
        else:  # cue, marker, phase: a line through the state panels where the event enters the ring
            color = {"cue": "#2e86de", "marker": "#c0392b"}.get(ev.kind, "#555555")
            ax_in.axvline(ev.t, color=color, lw=1.0, ls="--")
            ax_in.text(ev.t, 1.04, ev.label, transform=top, ha="center", va="bottom", fontsize=8, color=color)
            for ax in axes:
                ax.axvline(ev.t, color=SPEED_COLOR, lw=0.8, ls=":", alpha=0.9)


# --- ring animation ----------------------------------------------------------------------------------------------
def ring_animation(states: np.ndarray, channels: list[int], path: str | Path, *, events: list[Event] = (),
                   title: str = "", layout: str = "ring", max_frames: int = 120, size_px: int = 360,
                   fps: int = 12) -> int:
    """An animated GIF of the ring: every chosen channel a concentric annulus (inner = first), unit 0 (where the
    solo encoder writes) at the top, +1 speed clockwise. Each channel keeps its own colour scale. Returns the
    number of frames: every ``ceil(T / max_frames)``-th step, so at most ``max_frames``."""
    _mpl()
    try:
        from PIL import Image
    except ImportError:
        raise PlotError(MISSING) from None
    T, _, N = states.shape
    sel = states[:, channels, :].astype(np.float64)  # [T, k, N]
    scaled, signed = np.empty_like(sel), False
    for j in range(len(channels)):
        vmin, vmax, cmap = _scale(sel[:, j])
        signed = signed or cmap != "magma"
        scaled[:, j] = sel[:, j] / vmax
    cmap, vmin = ("RdBu_r", -1.0) if signed else ("magma", 0.0)

    dpi = 100
    fig = new_figure((size_px, size_px), dpi)
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(-1)
    theta = np.linspace(0, 2 * np.pi, N + 1) - np.pi / N  # unit i centred on angle 2*pi*i/N
    r0 = max(1.0, len(channels) * 0.6)
    radii = r0 + np.arange(len(channels) + 1)
    mesh = ax.pcolormesh(theta, radii, scaled[0], cmap=cmap, vmin=vmin, vmax=1.0, shading="flat")
    ax.set_ylim(0, radii[-1])
    ax.set_xticks([0.0], ["unit 0"], fontsize=7)
    ax.set_yticks([])
    ax.grid(False)
    ax.spines["polar"].set_visible(False)
    clock = ax.text(0, 0, "", ha="center", va="center", fontsize=10)  # theta 0, r 0: the centre
    ev_text = ax.annotate("", (0, 0), xytext=(0, -14), textcoords="offset points", ha="center", va="top",
                          fontsize=7, color="#c0392b")
    if layout == "ring":
        ring_text = (f"channels {', '.join(map(str, channels))} (inner → outer)" if len(channels) > 1
                     else f"channel {channels[0]}")
    else:
        ring_text = "hidden units in index order"
    fig.suptitle(f"{title}\n{ring_text}" if title else ring_text, fontsize=8)
    by_t: dict[int, str] = {}
    for ev in events:
        if ev.kind != "window":
            by_t.setdefault(ev.t, {"symbol": "input symbol ", "marker": "marked value "}.get(ev.kind, "") + ev.label)
        else:
            for t in range(ev.t, (ev.end if ev.end is not None else T - 1) + 1):
                by_t.setdefault(t, "recall")

    stride = max(1, math.ceil(T / max_frames))
    frames = []
    for t in range(0, T, stride):
        mesh.set_array(scaled[t].ravel())
        clock.set_text(f"t = {t}")
        ev_text.set_text(next((by_t[u] for u in range(t, min(t + stride, T)) if u in by_t), ""))
        fig.canvas.draw()
        rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]
        frames.append(Image.fromarray(rgb).quantize(colors=128, method=Image.Quantize.MEDIANCUT))
    path = Path(path)
    atomic_write(path, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                                                duration=int(1000 / fps), loop=0, disposal=1))
    return len(frames)


# --- training curves ---------------------------------------------------------------------------------------------
def curves_figure(runs: list[Run], labels: list[str], metric: str, *, x: str = "step", logy: bool | None = None,
                  size_px: tuple[int, int] = (900, 540), dpi: int = 120):
    """One line per run; each run's best value starred. Loss metrics default to a log axis: the paper's copy
    result is orders of magnitude."""
    fig = new_figure(size_px, dpi)
    ax = fig.add_subplot()
    higher = metric.endswith("acc")
    all_y = []
    for run, label in zip(runs, labels):
        xs, ys = run.series(metric, x)
        if not ys:
            continue
        all_y += ys
        (line,) = ax.plot(xs, ys, marker="o" if len(ys) <= 30 else None, ms=3, lw=1.6, label=label)
        i = int(np.argmax(ys) if higher else np.argmin(ys))
        ax.plot(xs[i], ys[i], marker="*", ms=11, color=line.get_color(), mec="black", mew=0.6, ls="none")
    if logy is None:
        logy = metric.endswith("loss") and bool(all_y) and min(all_y) > 0 and max(all_y) / min(all_y) > 20
    if logy:
        ax.set_yscale("log")
    tasks = {r.task.get("name") or r.train_config.get("task") for r in runs}
    if tasks == {"adding"} and metric.endswith("loss") and metric != "train_loss":
        ax.axhline(0.05, color="#555555", ls="--", lw=1)
        ax.text(1.0, 0.05, "solved (MSE 0.05) ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=8, color="#555555")
    ax.set_xlabel("training step" if x == "step" else x)
    ax.set_ylabel(metric)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{metric} by {x}   (★ best of each run)", fontsize=10, loc="left")
    return fig
