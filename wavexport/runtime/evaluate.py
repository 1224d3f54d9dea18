"""Task data and metrics for an exported model, rebuilt from its metadata alone (no checkpoint needed)."""
from __future__ import annotations

import numpy as np
import torch

from ..exporters.contract import Contract
from ..tasks import DatasetTask, make_task
from ..training.trainer import HELD_OUT_SEEDS, load_eval_splits


def task_from_contract(c: Contract):
    """The task an exported model was trained on: name, length and psMNIST permutation come from the metadata."""
    if c.task == "copy":
        return make_task("copy", c.seq_len - 20)
    if c.task in ("adding", "nscifar10"):
        return make_task(c.task, c.seq_len)
    if c.task == "psmnist":
        return make_task("psmnist", permutation=c.permutation)
    return make_task(c.task)


def task_samples(c: Contract, n: int, data_dir=None, seed: int = 0, offset: int = 0):
    """(model inputs [n, T, n_in] float32, targets) for ``n`` test samples starting at ``offset``.

    Image tasks read the real test split (the same 10k images whatever the training seed); synthetic tasks draw
    from ``seed``. nsCIFAR10's noise steps come from ``seed`` as well.
    """
    task = task_from_contract(c)
    gen = torch.Generator().manual_seed(seed + HELD_OUT_SEEDS["test"])
    if isinstance(task, DatasetTask):
        test = load_eval_splits(task, data_dir, seed)["test"]
        x, y = test.x[offset:offset + n], test.y[offset:offset + n]
        return task.inputs(x, gen).numpy(), y
    xs, y = task.sample(offset + n, gen)
    return xs[offset:].numpy(), y[offset:]


def evaluate_streamer(streamer, xs: np.ndarray, target: torch.Tensor, batch_size: int = 500, progress=None,
                      task=None) -> dict:
    """Mean task metrics of a streamer (ONNX or torch) over prepared inputs, fed in batches of whole sequences.
    A model exported with a fixed batch is fed in chunks of that batch, the last one padded with zeros."""
    task = task or task_from_contract(streamer.contract)
    fixed = streamer.contract.batch
    batch_size = fixed or batch_size
    totals: dict[str, float] = {}
    for i in range(0, len(xs), batch_size):
        chunk = np.asarray(xs[i:i + batch_size], dtype=np.float32)
        n = len(chunk)
        if fixed is not None and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), np.float32)])
        streamer.reset(len(chunk))
        ys = torch.from_numpy(streamer.feed(chunk)[:n])
        for k, v in task.metrics(ys, target[i:i + batch_size]).items():
            totals[k] = totals.get(k, 0.0) + v
        if progress is not None:
            progress(n)
    return {k: v / max(len(xs), 1) for k, v in totals.items()}
