"""Per-step latency of an exported model next to the eager PyTorch step of the same model, in one process."""
from __future__ import annotations

import json
import os
import time

import numpy as np

from ..core.errors import ContractError
from .session import StreamingSession


def _percentiles(ns: list[int]) -> dict:
    a = np.asarray(ns, dtype=np.float64) / 1e3  # µs
    return {"median_us": float(np.median(a)), "p90_us": float(np.percentile(a, 90)),
            "p99_us": float(np.percentile(a, 99)), "mean_us": float(a.mean())}


def time_steps(step, x, steps: int, warmup: int) -> dict:
    clock = time.perf_counter_ns
    for _ in range(warmup):
        step(x)
    ns = []
    for _ in range(steps):
        t0 = clock()
        step(x)
        ns.append(clock() - t0)
    return _percentiles(ns)


def _canonical(model_config: dict) -> str:
    return json.dumps(model_config, sort_keys=True)


def bench(path, batches=None, steps=2000, chunk=64, threads=1, checkpoint=None, providers=None) -> dict:
    """Per-step latency of the ONNX session and of the eager PyTorch step of the same model, in one run, at each of
    ``batches`` (default: 1 and 64, or the batch of a fixed-batch export)."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..models import build_model

    sess = StreamingSession(path, providers=providers, threads=threads)
    c = sess.contract
    if batches is None:
        batches = (1, 64) if c.batch is None else (c.batch,)
    if c.batch is not None and any(b != c.batch for b in batches):
        raise ContractError(f"{path} was exported with a fixed batch of {c.batch}: bench it with --batch {c.batch}")
    torch.set_num_threads(threads)
    if checkpoint:
        ck = load_checkpoint(checkpoint)
        if _canonical(ck.model_config) != _canonical(c.model_config):  # else the speedup compares two models
            raise ContractError(f"{checkpoint} is not the model in {path}: its model is {_canonical(ck.model_config)}, "
                                f"the file's {_canonical(c.model_config)}")
        model = ck.build()[0]
    else:  # same architecture and size: the same work per step whatever the weights
        model = build_model(c.model_config).eval()
    rng = np.random.default_rng(0)
    results = []
    for b in batches:
        x = rng.random((b, c.input_size), dtype=np.float32)
        sess.reset(b)
        onnx_t = time_steps(sess.step, x, steps, warmup=min(200, steps))
        xs = rng.random((b, chunk, c.input_size), dtype=np.float32)
        sess.reset(b)
        feed_t = time_steps(sess.feed, xs, max(steps // chunk, 20), warmup=5)
        feed_per_step = {k: v / chunk for k, v in feed_t.items()}
        state = model.initial_state(b)
        xt = torch.from_numpy(x)

        def torch_step(_x, _state=[state]):
            _state[0] = model.step(xt, _state[0])[1]

        with torch.no_grad():
            torch_t = time_steps(torch_step, x, steps, warmup=min(200, steps))
        results.append({
            "batch": b, "onnx_step": onnx_t, "onnx_feed_per_step": feed_per_step, "torch_step": torch_t,
            "speedup_vs_torch": torch_t["median_us"] / onnx_t["median_us"],
            "throughput_steps_per_s": b * 1e6 / onnx_t["mean_us"],
            "feed_throughput_steps_per_s": b * 1e6 / feed_per_step["mean_us"],
        })
    return {"model": os.fspath(path), "format": c.format, "arch": c.arch, "task": c.task,
            "quantization": c.quantization, "threads": threads, "providers": sess.providers,
            "steps": steps, "chunk": chunk, "results": results}
