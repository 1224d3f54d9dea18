"""The interface every recurrent model in wavexport shares.

State is always a tuple of tensors (``(h,)``, or ``(h, c)`` for the LSTM) so the trainer, the exporter and the
streaming runtime handle every architecture the same way, and name each tensor from ``state_names``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

State = tuple[torch.Tensor, ...]


def make_readout(n_features: int, n_out: int, kind: str = "linear", hidden: int = 100) -> nn.Module:
    """Linear readout (the paper's default) or its 2-layer MLP readout ("wRNN + MLP")."""
    if kind == "linear":
        return nn.Linear(n_features, n_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, n_out))
    raise ValueError(f"unknown readout {kind!r} (expected 'linear' or 'mlp')")


class RecurrentModel(nn.Module):
    """Base class: subclasses define ``state_names``, ``state_shape`` and ``step``; ``forward`` may be faster."""

    state_names: Sequence[str] = ("h",)

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.n_in = n_in
        self.n_out = n_out

    # --- state -----------------------------------------------------------------------------------------------
    def state_shape(self) -> tuple[int, ...]:
        """Shape of every state tensor without the leading batch axis."""
        raise NotImplementedError

    def initial_state(self, batch_size: int, device=None, dtype=torch.float32) -> State:
        if device is None:
            device = next(self.parameters()).device
        shape = (batch_size, *self.state_shape())
        return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in self.state_names)

    # --- computation -----------------------------------------------------------------------------------------
    # A step is split in three so that a sequence computation can batch the two parts that do not recur (the input
    # projection and the readout) over all timesteps and loop over ``advance`` alone, as WaveRNN.forward does.
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The input projection, [..., n_in] -> [..., U]: no state, so it may run on every step at once."""
        raise NotImplementedError

    def advance(self, u_t: torch.Tensor, state: State) -> State:
        """The recurrence proper: encoded input [batch, U] and state -> next state."""
        raise NotImplementedError

    def read(self, state: State) -> torch.Tensor:
        """The readout from a state: [batch, n_out]."""
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One timestep: ``x_t`` [batch, n_in] -> (``y_t`` [batch, n_out], next state)."""
        state = self.advance(self.encode(x_t), state)
        return self.read(state), state

    def forward(self, xs: torch.Tensor, state: State | None = None, last_only: bool = False
                ) -> tuple[torch.Tensor, State]:
        """Whole sequence, batch first: ``xs`` [batch, T, n_in] -> (``ys`` [batch, T, n_out], final state).

        ``last_only`` returns ``ys`` [batch, 1, n_out] for the final step only, which spares the readout of every
        other step when a task reads its answer at the end (sMNIST, adding).
        """
        if state is None:
            state = self.initial_state(xs.shape[0], device=xs.device, dtype=xs.dtype)
        ys = []
        for t in range(xs.shape[1]):
            y, state = self.step(xs[:, t], state)
            ys.append(y)
        out = torch.stack(ys, 1)
        return (out[:, -1:] if last_only else out), state

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
