"""The paper's synthetic memory tasks. A fresh batch is drawn from a seeded generator every training step."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Task


class SyntheticTask(Task):
    kind = "synthetic"

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(xs [B, T, n_in] float32, targets) on the CPU."""
        raise NotImplementedError


class CopyTask(SyntheticTask):
    """Copy (Arjovsky et al. 2016, as in the paper): remember 10 symbols over a gap of T steps.

    ``T`` is the paper's T and the sequence is T+20 steps: 10 symbols from {1..8}, T-1 blanks (0), the delimiter 9,
    then 10 blanks during which the model must emit the 10 symbols. Targets are 0 (blank) at every other step, and
    the loss is the cross-entropy over all T+20 steps; ``acc`` is the accuracy on the 10 recall steps alone.
    """
    name = "copy"
    n_in = n_out = 10
    n_symbols = 10
    readout = "last:10"
    primary_metric = "loss"

    def __init__(self, T: int = 80):
        if T < 1:
            raise ValueError(f"copy task needs T >= 1, got {T}")
        self.T = int(T)
        self.seq_len = self.T + 2 * self.n_symbols

    def args(self):
        return {"T": self.T}

    def describe(self) -> str:
        """The paper's T (what --seq sets) and the sequence length T+20, which differ for this task."""
        return f"{self.name}: T={self.T} (sequences of {self.seq_len} steps), in={self.n_in}, out={self.n_out}"

    def sample(self, batch_size, generator):
        k, L = self.n_symbols, self.seq_len
        symbols = torch.randint(1, 9, (batch_size, k), generator=generator)
        seq = torch.zeros(batch_size, L, dtype=torch.long)
        seq[:, :k] = symbols
        seq[:, L - k - 1] = 9
        target = torch.zeros(batch_size, L, dtype=torch.long)
        target[:, -k:] = symbols
        return F.one_hot(seq, self.n_in).float(), target

    def loss(self, ys, target):
        return F.cross_entropy(ys.flatten(0, 1), target.flatten())

    def metrics(self, ys, target):
        ce = F.cross_entropy(ys.flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
        recall = (ys[:, -self.n_symbols:].argmax(-1) == target[:, -self.n_symbols:]).float().mean(1)
        return {"loss": ce.mean(1).sum().item(), "acc": recall.sum().item()}


class AddingTask(SyntheticTask):
    """Adding (Hochreiter & Schmidhuber 1997): sum the two values marked among T; MSE on the last step.

    Channel 0 holds values ~ U[0, 1], channel 1 the markers: one in [0, T/2), one in [T/2, T). Solved when the
    held-out MSE reaches 0.05 (a model that always answers 1 scores about 0.167), on at least 100 sequences: that
    constant answer's squared error is below 0.05 for 40% of single sequences, its mean over 100 (standard
    deviation 0.02) essentially never.
    """
    name = "adding"
    n_in = 2
    n_out = 1
    output_kind = "regression"
    primary_metric = "loss"
    solved_threshold = 0.05
    solved_min_samples = 100

    def __init__(self, T: int = 100):
        if T < 2:
            raise ValueError(f"adding task needs T >= 2, got {T}")
        self.T = self.seq_len = int(T)

    def args(self):
        return {"T": self.T}

    def sample(self, batch_size, generator):
        T, half = self.T, self.T // 2
        values = torch.rand(batch_size, T, generator=generator)
        first = torch.randint(0, half, (batch_size,), generator=generator)
        second = torch.randint(half, T, (batch_size,), generator=generator)
        markers = torch.zeros(batch_size, T)
        rows = torch.arange(batch_size)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        target = values[rows, first] + values[rows, second]
        return torch.stack([values, markers], -1), target

    def loss(self, ys, target):
        return F.mse_loss(ys[:, -1, 0], target)

    def metrics(self, ys, target):
        return {"loss": F.mse_loss(ys[:, -1, 0], target, reduction="sum").item()}
