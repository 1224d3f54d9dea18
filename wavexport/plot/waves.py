"""Hidden-state trajectories and the wave speed: everything ``wavexport plot waves`` computes, without matplotlib.

Where the hidden states come from is one function, :func:`open_source`: it turns a path into a
:class:`StateSource` (one input sequence in, every hidden state out). A checkpoint's torch model or an exported ONNX model
(through the streaming runtime); the figures, the events and the wave speed need nothing else.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import PlotError



# --- where hidden states come from -------------------------------------------------------------------------------
class StateSource:
    """One sequence ``xs`` [T, n_in] in, every hidden state [T, C, N] out.

    ``layout`` is ``"ring"`` for the Wave-RNN (C channels, each a ring of N units) and ``"units"`` for the fully
    connected RNNs, whose hidden vector [H] is returned as one channel [T, 1, H] (the LSTM's ``h``, not ``c``).
    ``task``, ``train_config`` and ``model_config`` describe what the model was trained on, when known.
    """

    layout: str = "ring"
    n_in: int = 0
    task = None
    train_config: dict = {}
    model_config: dict = {}
    path: str = ""

    def states(self, xs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def outputs(self, xs: np.ndarray) -> np.ndarray:
        """The model's output at every step, [T, n_out] (what its prediction is read from)."""
        raise NotImplementedError

    def describe(self) -> str:
        return describe_model(self.model_config) if self.model_config else Path(self.path).name


class TorchSource(StateSource):
    """A torch :class:`~wavexport.models.RecurrentModel` run on the CPU, one sequence at a time."""

    def __init__(self, model, task=None, train_config: dict | None = None, model_config: dict | None = None,
                 path: str = ""):
        from ..models import WaveRNN

        self.model = model.eval()
        self.task = task
        self.train_config = dict(train_config or {})
        self.model_config = dict(model_config or {})
        self.path = path
        self.n_in = model.n_in
        self.layout = "ring" if isinstance(model, WaveRNN) else "units"

    @torch.no_grad()
    def states(self, xs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(xs, dtype=np.float32))[None]  # [1, T, n_in]
        if self.layout == "ring":
            return self.model.states(x)[0].numpy()
        # Through ``step``, the per-step interface an exported step model also has; h is state[0] for every arch.
        state, out = self.model.initial_state(1), []
        for t in range(x.shape[1]):
            _, state = self.model.step(x[:, t], state)
            out.append(state[0][0])
        return torch.stack(out)[:, None].numpy()

    @torch.no_grad()
    def outputs(self, xs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(xs, dtype=np.float32))[None]
        return self.model(x)[0][0].numpy()


class OnnxSource(StateSource):
    """An exported model driven through the streaming runtime one step at a time: the state it carries is what is
    drawn. Task and model config come from the file's metadata; there is no training seed in it, so synthetic
    ``--task-sample`` draws use seed 0."""

    def __init__(self, path):
        from ..runtime import StreamingSession
        from ..evaluation import task_from_contract

        self.session = StreamingSession(path)
        c = self.session.contract
        self.path, self.n_in = os.fspath(path), c.input_size
        self.task, self.model_config, self.train_config = task_from_contract(c), dict(c.model_config), {}
        self.layout = "ring" if len(c.state_shapes["h"]) == 3 else "units"

    def states(self, xs: np.ndarray) -> np.ndarray:
        s = self.session
        s.reset(1)
        out = []
        for x in np.asarray(xs, dtype=np.float32):
            s.step(x)
            out.append(s.state["h"][0])
        h = np.stack(out)
        return h if self.layout == "ring" else h[:, None]

    def outputs(self, xs: np.ndarray) -> np.ndarray:
        self.session.reset(1)
        return self.session.feed(np.asarray(xs, dtype=np.float32))


def open_source(path: str | os.PathLike) -> StateSource:
    """A checkpoint (``.pt`` or a run directory, whose best.pt is used) or an exported ``.onnx`` model."""
    from ..checkpoint import Checkpoint
    from ..core.io import is_onnx_path

    p = Path(path)
    if is_onnx_path(p):
        return OnnxSource(p)
    ckpt = Checkpoint.load(p)
    model, task = ckpt.build()
    return TorchSource(model, task, ckpt.train_config.to_dict(), ckpt.model_config, ckpt.path)


def describe_model(model_config: dict) -> str:
    """``wrnn 6x40`` / ``irnn 100``, plus any recurrence init that differs from the arch's default."""
    from ..models import ARCHS

    arch = model_config.get("arch", "?")
    if "channels" in model_config:
        text = f"{arch} {model_config['channels']}×{model_config['ring']}"
    else:
        text = f"{arch} {model_config.get('hidden', '?')}"
    spec = ARCHS.get(arch)
    init = model_config.get("rec_init")
    if spec is not None and init is not None and init != spec.defaults.get("rec_init", init):
        text += f" ({init} init)"
    return text


# --- the input sequence ------------------------------------------------------------------------------------------
def task_sequence(source: StateSource, index: int = 0, data_dir=None) -> np.ndarray:
    """Sequence ``index`` [T, n_in] of the held-out test set that ``wavexport eval`` scores for this run (see
    :func:`task_sample`, which also returns its target)."""
    return task_sample(source, index, data_dir)[0]


def task_sample(source: StateSource, index: int = 0, data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """(sequence [T, n_in], its target) of sample ``index`` of the held-out test set ``wavexport eval`` scores.

    Synthetic tasks: sample i of the run's held-out test stream (``training.trainer.held_out``), the i-th sequence
    eval uses (indices past the evaluation set continue the same stream). Image tasks: test image i;
    the nsCIFAR10 noise comes from the test seed, so it is fixed but not the noise eval drew for that image.
    """
    from ..evaluation import MAX_HELD_OUT, test_stream
    from ..tasks import resolve_data_dir

    task, cfg = source.task, source.train_config
    if task is None:
        raise PlotError(f"{source.path}: no task is recorded with this model; give a sequence with --input")
    if index < 0 or index >= MAX_HELD_OUT:
        raise PlotError(f"--task-sample must be in 0..{MAX_HELD_OUT - 1}, got {index}")
    seed = int(cfg.get("seed", 0))
    if task.kind == "dataset":
        data_dir = resolve_data_dir(data_dir, cfg.get("data_dir"))
    xs, y = next(test_stream(task, seed, "test", n=1, offset=index, data_dir=data_dir), (None, None))
    if xs is None:
        raise PlotError(f"--task-sample {index}: past the end of the {task.name} test set")
    return xs[0].numpy(), np.asarray(y[0])


def sample_caption(task, ys: np.ndarray, target=None) -> str:
    """What the sample asks and what the model answers, for a figure's title and the command's output:
    ``label 7, prediction 7 (p 0.93)`` (image tasks), ``symbols 3 1 4 ..., recalled 3 1 4 ...`` (copy),
    ``target 1.234, prediction 1.198`` (adding); without a target (a user's --input) the prediction alone."""
    ys = np.asarray(ys, dtype=np.float64)
    if not np.isfinite(ys).all():
        return ("target " + _fmt_target(target) + ", " if target is not None else "") + "prediction not finite"
    if task is not None and task.output_kind == "regression":
        pred = f"prediction {ys[-1, 0]:.3f}"
        return (f"target {float(np.asarray(target).reshape(-1)[0]):.3f}, " if target is not None else "") + pred
    k = int(task.readout.split(":")[1]) if task is not None and task.readout.startswith("last:") else 1
    if k > 1:  # copy: the symbols to recall, and what the last k steps answer
        recalled = " ".join(str(int(v)) for v in ys[-k:].argmax(-1))
        head = f"symbols {' '.join(str(int(v)) for v in np.asarray(target).reshape(-1)[-k:])}, " \
            if target is not None else ""
        return f"{head}recalled {recalled}"
    z = np.exp(ys[-1] - ys[-1].max())
    p = z / z.sum()
    pred = f"prediction {int(p.argmax())} (p {p.max():.2f})"
    return (f"label {_fmt_target(target)}, " if target is not None else "") + pred


def _fmt_target(target) -> str:
    a = np.asarray(target).reshape(-1)
    return str(a[0].item()) if a.size == 1 else " ".join(str(v.item()) for v in a)


def load_input(path: str | os.PathLike, n_in: int) -> np.ndarray:
    """A model-input sequence from a ``.npy`` file: [T, n_in], [1, T, n_in], or [T] when the model takes one value
    per step. These are the values the model sees (scaled, permuted), not raw pixels."""
    from ..core.io import read_npy

    p = Path(path)
    arr = read_npy(p)
    shape = arr.shape
    if arr.ndim == 3 and shape[0] == 1:
        arr = arr[0]
    elif arr.ndim == 1 and n_in == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != n_in:
        want = f"[T, {n_in}]" + (" or [T]" if n_in == 1 else "") + f" or [1, T, {n_in}]"
        raise PlotError(f"--input {p} has shape {list(shape)}; this model takes {want} (n_in = {n_in})")
    if arr.shape[0] < 3:
        raise PlotError(f"--input {p}: need at least 3 time steps, found {arr.shape[0]}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise PlotError(f"--input {p} contains NaN or infinite values")
    return arr


# --- input events: what to annotate on the time axis ------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """Something the task put into the input at step ``t`` (to ``end`` for a span)."""
    t: int
    label: str
    kind: str  # "symbol", "cue", "window", "marker", "phase"
    end: int | None = None


def input_events(task_name: str | None, xs: np.ndarray) -> list[Event]:
    """Read the task's events back from the input itself, so a user's ``--input`` sequence is annotated too.

    copy: the symbols (one-hot 1..8), the delimiter 9 and the recall window after it; adding: the two marked
    values; nsCIFAR10: where the noise begins. The image tasks have no discrete events.
    """
    xs = np.asarray(xs)
    T = len(xs)
    events: list[Event] = []
    if task_name == "copy" and xs.shape[1] == 10:
        k = xs.argmax(1)
        on = xs.max(1) > 0.5
        for t in range(T):
            if on[t] and 1 <= k[t] <= 8:
                events.append(Event(t, str(int(k[t])), "symbol"))
            elif on[t] and k[t] == 9:
                events.append(Event(t, "recall cue", "cue"))
                if t + 1 < T:
                    events.append(Event(t + 1, "recall", "window", T - 1))
    elif task_name == "adding" and xs.shape[1] == 2:
        for t in np.flatnonzero(xs[:, 1] > 0.5):
            events.append(Event(int(t), f"{xs[t, 0]:.2f}", "marker"))
    elif task_name == "nscifar10" and T > 32:
        events.append(Event(32, "noise", "phase"))
    return events


# --- the wave speed ----------------------------------------------------------------------------------------------
@dataclass
class WaveSpeed:
    """Dominant wave speed of a space-time activity pattern.

    ``speed``: units per step, positive in the direction of the shift init (a pulse at unit i moves to unit i+1).
    ``strength``: the peak correlation in [-1, 1]; 1 means the changes travel rigidly at ``speed``.
    ``lags``/``scores``: the whole correlation profile, lag -(N-1)//2 .. N//2.
    """
    speed: int
    strength: float
    lags: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)

    def __str__(self) -> str:
        return f"{self.signed} unit/step (r = {self.strength:.2f})"

    @property
    def signed(self) -> str:
        """``+1``, ``-2``, ``0``."""
        return f"{self.speed:+d}" if self.speed else "0"

    def to_dict(self) -> dict:
        return {"speed": self.speed, "strength": round(float(self.strength), 6)}


def wave_speed(states: np.ndarray) -> WaveSpeed:
    """The ring shift that best carries each step's change of activity onto the next one's.

    ``states`` [T, N] or [T, C, N] (the last axis is the ring). With d_t = h_t - h_{t-1}, the score of lag s is
    the correlation (cosine) sum_t,c <d_t, roll(d_{t-1}, s)> / sqrt(sum |d_t|^2 * sum |d_{t-1}|^2); the speed is
    the lag with the highest score (ties go to the smallest |s|), its score the strength.

    Why the change and not the activity itself: static activity - a bias-driven background, or the filled block
    behind a wave front - correlates with itself at lag 0 and hides the motion. An untrained shift wRNN on the copy
    task is the sharp case: its solo encoder writes 1 to unit 0 at every step, the state is a block of ones growing
    by one unit a step, and raw activity scores lag 0 and lag +1 almost alike; its changes are a single pulse moving
    +1 unit per step. For a pure wave h_t = roll(h_{t-1}, v) the changes obey d_t = roll(d_{t-1}, v) exactly.

    For the fully connected RNNs the H hidden units are treated as a ring in index order. That order means nothing
    for the iRNN, LSTM and GRU: expect a weak strength and an arbitrary lag, or 0 where units integrate in place
    (identity-init iRNN) or every change is the same input-weight vector (one input per step, as on sMNIST). It is
    a real ring for ``irnn-shift``, whose rolled-identity recurrence moves activity one unit per step.
    """
    h = np.asarray(states, dtype=np.float64)
    if h.ndim == 2:
        h = h[:, None]
    if h.ndim != 3:
        raise PlotError(f"wave speed needs states [T, N] or [T, C, N], got shape {list(np.shape(states))}")
    if h.shape[0] < 3:
        raise PlotError(f"wave speed needs at least 3 time steps, got {h.shape[0]}")
    if not np.isfinite(h).all():
        raise PlotError("the hidden state holds NaN or infinite values (a diverged model?)")
    n = h.shape[-1]
    d = np.diff(h, axis=0)
    a, b = d[1:], d[:-1]
    # Circular cross-correlation over the ring, summed over time and channels: ifft(A conj(B))[s] = sum a[i] b[i-s].
    spec = (np.fft.rfft(a, axis=-1) * np.conj(np.fft.rfft(b, axis=-1))).sum(axis=(0, 1))
    corr = np.fft.irfft(spec, n=n)
    lags = np.arange(-((n - 1) // 2), n // 2 + 1)
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    scores = corr[lags % n] / denom if denom > 0 else np.zeros(len(lags))
    best = scores.max()
    tied = np.flatnonzero(scores >= best - 1e-9 * max(1.0, abs(best)))
    pick = tied[np.argmin(np.abs(lags[tied]))]
    return WaveSpeed(int(lags[pick]), float(scores[pick]), lags, scores)


def channel_speeds(states: np.ndarray) -> list[WaveSpeed]:
    """:func:`wave_speed` of each channel of [T, C, N] on its own (trained channels may differ)."""
    return [wave_speed(states[:, c]) for c in range(states.shape[1])]


def parse_channels(spec: str | None, n_channels: int, default: int = 3) -> list[int]:
    """``"0,2,5"``, ``"all"``, or None for the first ``default`` channels; indices checked against the model."""
    if spec is None:
        return list(range(min(default, n_channels)))
    if spec.strip().lower() == "all":
        return list(range(n_channels))
    try:
        chans = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise PlotError(f"--channels expects comma-separated integers or 'all', got {spec!r}") from None
    if not chans:
        raise PlotError("--channels names no channel")
    bad = [c for c in chans if not 0 <= c < n_channels]
    if bad:
        have = f"{n_channels} channels (0..{n_channels - 1})" if n_channels > 1 else "one channel (0)"
        raise PlotError(f"--channels {bad[0]} is out of range: the model has {have}")
    return list(dict.fromkeys(chans))
