"""What a task is: sizes, sequence length, data, loss and metric.

A task also carries what an exported model needs to be fed correctly (``readout``, ``input_scale``,
``permutation``); ``state_dict`` stores all of it in a checkpoint so evaluation and export rebuild the same task.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Split:
    """Raw examples of one split (uint8 pixels for image tasks) and their labels."""
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


class Task:
    name: str = ""
    kind: str = "synthetic"           # "synthetic": a fresh batch per step; "dataset": epochs over files
    n_in: int = 0
    n_out: int = 0
    seq_len: int = 0
    output_kind: str = "logits"       # or "regression"
    readout: str = "last"             # which steps carry the answer: "last" or "last:K"
    input_scale: float = 1.0
    primary_metric: str = "loss"      # selects best.pt and is what the progress bar shows
    higher_is_better: bool = False

    @property
    def permutation(self) -> list[int] | None:
        return None

    @property
    def last_only(self) -> bool:
        return self.readout == "last"

    def args(self) -> dict:
        """Constructor arguments that rebuild this task (JSON-able)."""
        return {}

    def state_dict(self) -> dict:
        return {"name": self.name, "args": self.args()}

    def describe(self) -> str:
        return f"{self.name}: T={self.seq_len}, in={self.n_in}, out={self.n_out}"

    # --- loss and metrics on model outputs ``ys`` [B, T or 1, n_out] ----------------------------------------------
    def loss(self, ys: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self, ys: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Sums over the batch (not means), so batches can be accumulated; divided by the count by the caller."""
        raise NotImplementedError


class ClassifyLast(Task):
    """Cross-entropy on the last step's logits, accuracy as the metric (the sequential image tasks)."""
    primary_metric = "acc"
    higher_is_better = True

    def loss(self, ys, target):
        return F.cross_entropy(ys[:, -1], target)

    def metrics(self, ys, target):
        logits = ys[:, -1]
        return {"loss": F.cross_entropy(logits, target, reduction="sum").item(),
                "acc": (logits.argmax(-1) == target).sum().item()}
