"""Fully connected baselines: the iRNN of Le et al. (2015), LSTM and GRU.

Each keeps its weights in the ``torch.nn`` sequence module, so ``forward`` gets the vendor kernel (cuDNN on a GPU,
oneDNN on CPU), while ``encode``/``advance``/``read`` (hence ``step``) spell the cell out in plain ops from the very
same parameters: that form exports to any ONNX opset. ``tests/test_models.py`` holds the two to equality.
"""
from __future__ import annotations

import torch
from torch import nn

from . import recurrence
from .base import RecurrentModel, State, make_readout


class _TorchRNN(RecurrentModel):
    rnn: nn.RNNBase

    def __init__(self, n_in: int, n_out: int, hidden: int, readout: str, readout_hidden: int):
        super().__init__(n_in, n_out)
        self.hidden = hidden
        self.readout = make_readout(hidden, n_out, readout, readout_hidden)

    def state_shape(self) -> tuple[int, ...]:
        return (self.hidden,)

    def encode(self, x):
        r = self.rnn
        return x @ r.weight_ih_l0.T + (r.bias_ih_l0 + r.bias_hh_l0)

    def read(self, state):
        return self.readout(state[0])

    def _as_torch_state(self, state: State):
        return state[0].unsqueeze(0).contiguous()

    def _from_torch_state(self, hn) -> State:
        return (hn[0],)

    def forward(self, xs, state=None, last_only=False):
        if state is None:
            state = self.initial_state(xs.shape[0], device=xs.device, dtype=xs.dtype)
        hs, hn = self.rnn(xs, self._as_torch_state(state))
        ys = self.readout(hs[:, -1:] if last_only else hs)
        return ys, self._from_torch_state(hn)


class IRNN(_TorchRNN):
    """ReLU RNN with identity-initialised recurrence (``rec_init="shift"``: the paper's Σ-init, a rolled identity)."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 256, rec_init: str = "identity",
                 readout: str = "linear", readout_hidden: int = 100):
        super().__init__(n_in, n_out, hidden, readout, readout_hidden)
        if rec_init not in ("identity", "shift", "random"):
            raise ValueError(f"unknown rec_init {rec_init!r} (expected identity, shift or random)")
        self.rnn = nn.RNN(n_in, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            # Le et al.: input weights N(0, 0.001), recurrent identity, zero biases.
            self.rnn.weight_ih_l0.normal_(0.0, 1e-3)
            if rec_init != "random":
                eye = torch.eye(hidden)
                self.rnn.weight_hh_l0.copy_(eye.roll(1, 0) if rec_init == "shift" else eye)
            self.rnn.bias_ih_l0.zero_()
            self.rnn.bias_hh_l0.zero_()

    def advance(self, u_t, state):
        return (torch.relu(u_t + state[0] @ self.rnn.weight_hh_l0.T),)

    def forward(self, xs, state=None, last_only=False):
        """nn.RNN's kernel without gradients or on CUDA (cuDNN); with gradients on the CPU,
        ``recurrence.irnn_sequence`` (one autograd node over the sequence, unless ``plain_recurrence()``)."""
        if not (xs.shape[1] and recurrence.use_fast() and recurrence.irnn_fast(xs)
                and recurrence.grad_needed(xs, *(state or ()), *self.parameters())):
            return super().forward(xs, state, last_only)
        if state is None:
            state = self.initial_state(xs.shape[0], device=xs.device, dtype=xs.dtype)
        r = self.rnn
        h, hs = recurrence.irnn_sequence(xs, state[0], r.weight_ih_l0, r.bias_ih_l0, r.bias_hh_l0, r.weight_hh_l0,
                                         keep_all=not last_only)
        ys = self.readout(h.unsqueeze(1) if last_only else hs)
        return ys, (h,)


class GRU(_TorchRNN):
    def __init__(self, n_in: int, n_out: int, hidden: int = 256, readout: str = "linear", readout_hidden: int = 100):
        super().__init__(n_in, n_out, hidden, readout, readout_hidden)
        self.rnn = nn.GRU(n_in, hidden, batch_first=True)

    def encode(self, x):  # b_hh stays in the recurrence: the candidate gate scales it by r
        return x @ self.rnn.weight_ih_l0.T + self.rnn.bias_ih_l0

    def advance(self, u_t, state):
        h = state[0]
        gh = h @ self.rnn.weight_hh_l0.T + self.rnn.bias_hh_l0
        i_r, i_z, i_n = u_t.chunk(3, -1)
        h_r, h_z, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        return ((1 - z) * n + z * h,)


class LSTM(_TorchRNN):
    state_names = ("h", "c")

    def __init__(self, n_in: int, n_out: int, hidden: int = 256, readout: str = "linear", readout_hidden: int = 100):
        super().__init__(n_in, n_out, hidden, readout, readout_hidden)
        self.rnn = nn.LSTM(n_in, hidden, batch_first=True)

    def _as_torch_state(self, state):
        return state[0].unsqueeze(0).contiguous(), state[1].unsqueeze(0).contiguous()

    def _from_torch_state(self, hn):
        return hn[0][0], hn[1][0]

    def advance(self, u_t, state):
        h, c = state
        i, f, g, o = (u_t + h @ self.rnn.weight_hh_l0.T).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c
