"""Task data and metrics for an exported model, rebuilt from its metadata alone (no checkpoint needed)."""
from __future__ import annotations

import numpy as np
import torch

from ..exporters.contract import Contract
from ..tasks import DatasetTask, make_task
from ..training.trainer import HELD_OUT_SEEDS, held_out, load_eval_splits


def task_from_contract(c: Contract):
    """The task an exported model was trained on: name, length and psMNIST permutation come from the metadata."""
    if c.task == "copy":
        return make_task("copy", c.seq_len - 20)
    if c.task in ("adding", "nscifar10"):
        return make_task(c.task, c.seq_len)
    if c.task == "psmnist":
        return make_task("psmnist", permutation=c.permutation)
    return make_task(c.task)


def task_batches(c: Contract, n: int, data_dir=None, seed: int = 0, offset: int = 0, batch_size: int = 500):
    """Test samples ``offset .. offset+n-1``, prepared as the model expects, in batches: (xs [b, T, n_in] float32,
    targets). One batch in memory at a time (10k nsCIFAR10 sequences would be 3.8 GB at once).

    Image tasks read the real test split (the same 10k images whatever the training seed; nsCIFAR10's noise comes
    from ``seed``); synthetic tasks take the held-out test stream of ``seed`` (``training.trainer.held_out``), the
    stream a checkpoint trained with that seed is evaluated on.
    """
    task = task_from_contract(c)
    test_seed = seed + HELD_OUT_SEEDS["test"]
    if not isinstance(task, DatasetTask):
        for xs, y in held_out(task, test_seed, offset, n):
            yield xs.numpy(), y
        return
    test = load_eval_splits(task, data_dir, seed)["test"]
    gen = torch.Generator().manual_seed(test_seed)
    end = min(offset + n, len(test))
    for i in range(offset, end, batch_size):
        j = min(i + batch_size, end)
        yield task.inputs(test.x[i:j], gen).numpy(), test.y[i:j]


def evaluate_streamer(streamer, batches, progress=None, task=None) -> dict:
    """Mean task metrics of a streamer (ONNX or torch) over (xs, targets) batches of whole sequences. A model
    exported with a fixed batch is fed in chunks of that batch, the last one padded with zeros."""
    task = task or task_from_contract(streamer.contract)
    fixed = streamer.contract.batch
    totals: dict[str, float] = {}
    count = 0
    for xs, target in batches:
        step = fixed or len(xs)
        for i in range(0, len(xs), step):
            chunk = np.asarray(xs[i:i + step], dtype=np.float32)
            n = len(chunk)
            if fixed is not None and n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), np.float32)])
            streamer.reset(len(chunk))
            ys = torch.from_numpy(streamer.feed(chunk)[:n])
            for k, v in task.metrics(ys, target[i:i + step]).items():
                totals[k] = totals.get(k, 0.0) + v
            count += n
            if progress is not None:
                progress(n)
    return {**{k: v / max(count, 1) for k, v in totals.items()}, "n": count}
