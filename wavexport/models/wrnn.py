"""The Wave-RNN: a ReLU RNN whose recurrence is a circular convolution over a ring of units.

h_t = act(u * h_{t-1} + V x_t + b), with h [batch, C, N]. The circular padding is written as a concatenation of the
ring's two ends (not ``padding_mode="circular"``), so the trained computation and the exported ONNX graph are the
same ops and the graph needs nothing newer than opset 13 (``Pad(mode=wrap)`` is opset 19+).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import recurrence
from .base import RecurrentModel, State, make_readout

REC_INITS = ("shift", "identity", "random")
ENC_INITS = ("solo", "normal")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda v: v}


def circular_pad(h: torch.Tensor, pad: int) -> torch.Tensor:
    """Wrap the last axis: [..., N] -> [..., N + 2*pad]."""
    if pad == 0:
        return h
    return torch.cat([h[..., -pad:], h, h[..., :pad]], dim=-1)


class WaveRNN(RecurrentModel):
    state_names = ("h",)

    def __init__(self, n_in: int, n_out: int, channels: int = 16, ring: int = 256, kernel: int = 3,
                 rec_init: str = "shift", enc_init: str = "solo", activation: str = "relu",
                 readout: str = "linear", readout_hidden: int = 100):
        super().__init__(n_in, n_out)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and positive, got {kernel}")
        if kernel > ring:
            raise ValueError(f"kernel ({kernel}) larger than the ring ({ring})")
        if rec_init not in REC_INITS:
            raise ValueError(f"unknown rec_init {rec_init!r} (expected one of {', '.join(REC_INITS)})")
        if rec_init == "shift" and kernel < 3:
            raise ValueError(f"the shift init needs a kernel of at least 3 taps, got {kernel}")
        if enc_init not in ENC_INITS:
            raise ValueError(f"unknown enc_init {enc_init!r} (expected one of {', '.join(ENC_INITS)})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r} (expected one of {', '.join(ACTIVATIONS)})")
        self.channels, self.ring, self.kernel = channels, ring, kernel
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.conv = nn.Conv1d(channels, channels, kernel, padding=0, bias=True)
        self.encoder = nn.Linear(n_in, channels * ring)
        self.readout = make_readout(channels * ring, n_out, readout, readout_hidden)
        self._init_recurrence(rec_init)
        self._init_encoder(enc_init)

    # --- the paper's initialisations -------------------------------------------------------------------------
    def _init_recurrence(self, how: str) -> None:
        if how == "random":
            return  # torch's default Conv1d init
        w = torch.zeros_like(self.conv.weight)  # [C_out, C_in, k]
        centre = self.kernel // 2
        # Cross-correlation reads x[i + j - centre] at tap j: tap centre-1 makes out[i] = h[i-1], a shift of +1.
        tap = centre - 1 if how == "shift" else centre
        idx = torch.arange(self.channels)
        w[idx, idx, tap] = 1.0
        with torch.no_grad():
            self.conv.weight.copy_(w)
            self.conv.bias.zero_()  # zero, so an untrained wave moves a pulse without decay or growth

    def _init_encoder(self, how: str) -> None:
        with torch.no_grad():
            if how == "solo":
                self.encoder.weight.zero_()
                self.encoder.weight.view(self.channels, self.ring, self.n_in)[:, 0, :] = 1.0
            else:
                self.encoder.weight.normal_(0.0, 1e-3)
            self.encoder.bias.zero_()

    # --- the recurrence (the only implementation: step, forward and the exporters all call it) -----------------
    def state_shape(self) -> tuple[int, ...]:
        return (self.channels, self.ring)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """V x + b for [..., n_in] -> [..., C*N], flat: ``recur`` folds it to [B, C, N] with one constant-shape
        reshape (an ``unflatten`` here exported as nine shape-computing ONNX ops per step)."""
        return self.encoder(x)

    def recur(self, u_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """h_t = act(conv(h_{t-1}) + u_t), u_t the encoded input [B, C*N]."""
        conv = F.conv1d(circular_pad(h, self.kernel // 2), self.conv.weight, self.conv.bias)
        return self._act(conv + u_t.reshape(-1, self.channels, self.ring))

    def advance(self, u_t: torch.Tensor, state: State) -> State:
        return (self.recur(u_t, state[0]),)

    def read(self, state: State) -> torch.Tensor:
        return self.readout(state[0].flatten(1))

    def _run(self, xs: torch.Tensor, state: State | None, keep: bool):
        """(final state, every state [B, T, C, N] or None): the fast recurrence of ``recurrence`` (one autograd node
        over the sequence) unless ``plain_recurrence()`` asks for the per-step loop over ``recur``."""
        if state is None:
            state = self.initial_state(xs.shape[0], device=xs.device, dtype=xs.dtype)
        fast = recurrence.use_fast() and recurrence.wave_fast(xs, self.activation, self.channels, self.ring,
                                                              self.kernel)
        if xs.shape[1] and fast:
            return recurrence.wave_sequence(xs, state[0], self.encoder.weight, self.encoder.bias, self.conv.weight,
                                            self.conv.bias, self.activation, keep)
        # Every timestep's input at once, then unbind: its backward is one stack, where indexing u[:, t] would
        # allocate a full-size zero gradient per step (that made a psMNIST iteration 30x slower).
        h, hs = state[0], []
        for u_t in self.encode(xs).unbind(1):
            h = self.recur(u_t, h)
            if keep:
                hs.append(h)
        return h, (torch.stack(hs, 1) if keep else None)

    def states(self, xs: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """Every hidden state of a sequence, [batch, T, C, N]: what the wave plots draw."""
        return self._run(xs, state, keep=True)[1]

    def forward(self, xs, state=None, last_only=False):
        # With last_only no per-step state is kept: evaluation of 784-step sequences stays small in memory.
        h, hs = self._run(xs, state, keep=not last_only)
        ys = self.read((h,)).unsqueeze(1) if last_only else self.readout(hs.flatten(2))
        return ys, (h,)
