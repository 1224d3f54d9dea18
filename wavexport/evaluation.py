"""The evaluation protocol, in one place: which held-out data a model is scored on, and the one metric loop.

Image tasks are scored on their validation or test split (nsCIFAR10's noise drawn from a fixed seed); synthetic
tasks on a fixed held-out stream drawn from the run's seed. :func:`test_stream` is the only way anything (training's
evaluations, ``eval`` of a checkpoint or an ONNX file, ``sample``, ``plot --task-sample``, the int8 check) gets
that data, so sample ``i`` is the same sequence everywhere. :func:`evaluate` is the one metric loop; it takes a
``predict(xs) -> ys`` function, made by :func:`model_predictor` (a torch model, whole sequences at once) or
:func:`streamer_predictor` (anything with ``reset``/``feed``: ``TorchStreamer``, ``StreamingSession``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np
import torch

from .config import TrainConfig, resolve_device
from .core.contract import Contract
from .core.errors import InputError, TrainingError
from .tasks import Split, SyntheticTask, Task, make_task, resolve_data_dir

HELD_OUT_SEEDS = {"valid": 1_000_003, "test": 2_000_003}  # offsets from the run seed for fixed evaluation draws
HELD_OUT_BLOCK = 500     # a synthetic held-out stream is drawn in blocks of this size, whatever is asked of it
MAX_HELD_OUT = 100_000   # the stream is drawn in order: bound the work an index typo can ask for
EVAL_BATCH = 500         # image tasks: examples per evaluation batch (the noise generator advances per batch)
DEFAULT_SYNTHETIC_N = 1000  # the held-out size of a synthetic task when nothing says otherwise (train's default)

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def held_out(task: SyntheticTask, seed: int, start: int = 0, n: int = 1) -> Batches:
    """Samples ``start .. start+n-1`` of the fixed held-out stream drawn from ``seed``, in chunks of at most
    ``HELD_OUT_BLOCK``: (xs, targets) pairs. Sample i is the same whoever asks and however many they ask for."""
    gen = torch.Generator().manual_seed(seed)
    pos, end = 0, start + n
    while pos < end:
        xs, y = task.sample(HELD_OUT_BLOCK, gen)
        lo, hi = max(start - pos, 0), min(end - pos, HELD_OUT_BLOCK)
        if lo < hi:
            yield xs[lo:hi], y[lo:hi]
        pos += HELD_OUT_BLOCK


def load_eval_splits(task: Task, data_dir, seed: int, limit: int | None = None) -> dict[str, Split]:
    """An image task's train/valid/test splits (valid drawn from ``seed``); ``limit`` cuts valid and test."""
    splits = task.load_splits(resolve_data_dir(data_dir), seed)
    if limit:
        for name in ("valid", "test"):
            s = splits[name]
            splits[name] = Split(s.x[:limit], s.y[:limit])
    return splits


def split_batches(task: Task, split: Split, seed: int, offset: int = 0, n: int | None = None,
                  batch_size: int = EVAL_BATCH) -> Batches:
    """Model inputs of examples ``offset .. offset+n-1`` of an image split, in batches; the noise (nsCIFAR10)
    comes from ``seed`` and advances batch by batch, so keep ``batch_size`` to reproduce a number."""
    gen = torch.Generator().manual_seed(seed)
    end = len(split) if n is None else min(offset + n, len(split))
    for i in range(offset, end, batch_size):
        j = min(i + batch_size, end)
        yield task.inputs(split.x[i:j], gen), split.y[i:j]


def test_stream(task: Task, run_seed: int = 0, split: str = "test", n: int | None = None, offset: int = 0,
                data_dir=None, splits: dict[str, Split] | None = None, limit: int | None = None) -> Batches:
    """The held-out data a run of seed ``run_seed`` is scored on: (xs [b, T, n_in] float32, targets) batches.

    Image tasks read ``split`` of the real data (``splits`` when already loaded, else from ``data_dir``), examples
    ``offset ..`` (``n`` of them, default all, ``limit`` as training's ``--eval-limit``); synthetic tasks take
    samples ``offset .. offset+n-1`` (default ``DEFAULT_SYNTHETIC_N``) of the stream of that split.
    """
    if split not in HELD_OUT_SEEDS:
        raise InputError(f"unknown split {split!r} (test or valid)")
    seed = run_seed + HELD_OUT_SEEDS[split]
    if task.kind == "synthetic":
        return held_out(task, seed, offset, n or DEFAULT_SYNTHETIC_N)
    if splits is None:
        splits = load_eval_splits(task, data_dir, run_seed, limit)
    return split_batches(task, splits[split], seed, offset, n)


# --- the metric loop -----------------------------------------------------------------------------------------------
def model_predictor(model, task: Task, device=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch model scored on whole sequences at once (only the steps the task reads)."""
    device = device or next(model.parameters()).device

    @torch.no_grad()
    def predict(xs):
        model.eval()
        return model(torch.as_tensor(xs).to(device), last_only=task.last_only)[0]
    return predict


def feed_sequences(streamer, xs) -> np.ndarray:
    """Outputs [batch, T, n_out] of a streamer (ONNX or torch) fed the sequences ``xs`` from a fresh state. A model
    exported with a fixed batch is fed in chunks of that batch, the last one padded with zeros."""
    xs = np.asarray(xs, dtype=np.float32)
    fixed = streamer.contract.batch
    step = fixed or len(xs)
    outs = []
    for i in range(0, len(xs), step):
        chunk = xs[i:i + step]
        n = len(chunk)
        if fixed is not None and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), np.float32)])
        streamer.reset(len(chunk))
        outs.append(streamer.feed(chunk)[:n])
    return np.concatenate(outs)


def streamer_predictor(streamer) -> Callable[[torch.Tensor], torch.Tensor]:
    """A streamer (ONNX or torch) fed each batch from a fresh state (:func:`feed_sequences`)."""
    return lambda xs: torch.from_numpy(feed_sequences(streamer, xs))


def evaluate(predict, task: Task, batches: Batches, progress: Callable[[int], None] | None = None) -> dict:
    """Mean task metrics of ``predict`` over (xs, targets) batches, and ``n``, the number of samples."""
    totals: dict[str, float] = {}
    count = 0
    for xs, target in batches:
        ys = predict(xs)
        for k, v in task.metrics(ys, target.to(ys.device)).items():
            totals[k] = totals.get(k, 0.0) + v
        count += len(target)
        if progress is not None:
            progress(len(target))
    return {**{k: v / max(count, 1) for k, v in totals.items()}, "n": count}


# --- who is scored on what -------------------------------------------------------------------------------------------
def task_from_contract(c: Contract) -> Task:
    """The task an exported model was trained on, rebuilt from its metadata alone (``task`` and ``task.args``)."""
    try:
        return make_task(c.task, **c.task_args)
    except (TypeError, ValueError) as e:
        raise InputError(f"the model's metadata names a task this version cannot build ({c.task}: {e})") from None


def default_eval_size(task: Task, train_config: TrainConfig | None = None) -> int | None:
    """How many held-out samples ``eval`` scores by default: those the run's own metrics came from (a whole image
    split, or its first ``--eval-limit``; a synthetic run's ``eval_batch``), else all / ``DEFAULT_SYNTHETIC_N``."""
    if task.kind == "dataset":
        return train_config.eval_limit if train_config is not None else None
    return train_config.eval_batch if train_config is not None else DEFAULT_SYNTHETIC_N


def evaluate_checkpoint(ckpt, split: str = "test", data_dir=None, limit: int | None = None,
                        device: str = "auto", bar=None) -> dict:
    """A checkpoint's task metric on ``split``, with the data, permutation and held-out draws training used.
    ``bar(split, total)``: a context manager giving a progress callback, or None."""
    if split not in HELD_OUT_SEEDS:
        raise TrainingError(f"unknown split {split!r} (test or valid)")
    score, _, size = _checkpoint_scorer(ckpt, data_dir, limit, device)
    with (bar(split, size(split)) if bar else contextlib.nullcontext(None)) as progress:
        return score(split, progress)


def _checkpoint_scorer(ckpt, data_dir, limit: int | None, device: str):
    """(``score(split, progress)``, task, ``size(split)``: how many samples it scores) for one checkpoint: its model
    built, and an image task's splits read, once."""
    model, task = ckpt.build()
    cfg = ckpt.train_config
    dev = resolve_device(device)
    model.to(dev)
    n = limit or default_eval_size(task, cfg)
    splits = load_eval_splits(task, resolve_data_dir(data_dir, cfg.data_dir), cfg.seed, limit) \
        if task.kind == "dataset" else None
    predict = model_predictor(model, task, dev)

    def score(split: str, progress: Callable[[int], None] | None = None) -> dict:
        return evaluate(predict, task, test_stream(task, cfg.seed, split, n=n, splits=splits), progress)

    def size(split: str) -> int:
        if splits is None:
            return n or DEFAULT_SYNTHETIC_N
        return len(splits[split]) if n is None else min(n, len(splits[split]))
    return score, task, size


def score_held_out(ckpt, data_dir=None, device: str = "auto", bar=None) -> dict:
    """``val_*`` and ``test_*`` metrics of a checkpoint made outside a run (an average), scored on the data training
    scores a checkpoint on; ``eval_limit`` too when the run evaluated only part of an image split (as training's
    metrics say). ``bar(split, total)``: a context manager giving a progress callback, or None."""
    score, task, size = _checkpoint_scorer(ckpt, data_dir, None, device)
    scores: dict = {}
    for split, prefix in (("valid", "val_"), ("test", "test_")):
        with (bar(split, size(split)) if bar else contextlib.nullcontext(None)) as progress:
            m = score(split, progress)
        scores.update({prefix + k: v for k, v in m.items() if k != "n"})
    if ckpt.train_config.eval_limit and task.kind == "dataset":
        scores["eval_limit"] = ckpt.train_config.eval_limit
    return scores


def held_out_draw(train_config: TrainConfig, task: Task) -> dict:
    """Which held-out data a run's test metrics were measured on, for an export's metadata (next to the metrics):
    the run's seed (it seeds the synthetic draw and nscifar10's noise) and, for a synthetic task or an image task
    trained with ``--eval-limit``, the number of samples. ``eval`` of the file scores the same data by default
    (:func:`export_draw`), so it reproduces the metrics."""
    draw = {"eval_seed": int(train_config.seed)}
    n = default_eval_size(task, train_config)
    if n is not None:  # synthetic: the run's eval_batch; an image task trained with --eval-limit: that many
        draw["eval_n"] = int(n)
    return draw


def export_draw(c: Contract, n: int | None = None) -> tuple[Task, int, int | None]:
    """(task, run seed, number of samples) an exported model is scored on by default: the draw its metadata's
    metrics came from (:func:`held_out_draw`; seed 0 and the default size for a file without it), unless ``n``."""
    task = task_from_contract(c)
    return task, int(c.metrics.get("eval_seed", 0)), n or c.metrics.get("eval_n") or default_eval_size(task)


def evaluate_export(streamer, n: int | None = None, data_dir=None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """An exported model's task metric on the test data of :func:`export_draw`, the task rebuilt from the metadata
    alone."""
    task, seed, n = export_draw(streamer.contract, n)
    return evaluate(streamer_predictor(streamer), task, test_stream(task, seed, "test", n=n, data_dir=data_dir),
                    progress)
