"""CLI commands over exported models: ``run`` (stream / batch), ``bench``, ``sample``; and ``eval`` of .onnx files."""
from __future__ import annotations

import json
import os
import sys
import time

import click
import numpy as np

from ..cliutil import int_list
from ..errors import WavexportError


class StreamInputError(WavexportError):
    pass


def is_onnx_path(path) -> bool:
    return os.fspath(path).lower().endswith(".onnx")


def _session(path, threads=1, providers=None):
    from .session import StreamingSession

    return StreamingSession(path, providers=providers, threads=threads)


def _provider_option(f):
    return click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
                        help="ONNX Runtime execution provider (cuda needs the gpu extra: onnxruntime-gpu).")(f)


def _providers(name: str):
    if name == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise StreamInputError("--provider cuda: this onnxruntime has no CUDA provider "
                                   "(pip install 'wavexport[gpu]')")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# --- run ---------------------------------------------------------------------------------------------------------
def parse_line(line: str, n_in: int) -> np.ndarray:
    """One timestep: numbers separated by spaces and/or commas, or a JSON array -> float32 [n_in], finite."""
    text = line.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"bad JSON array ({e.msg})") from None
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise ValueError("the JSON array must hold numbers only")
    else:
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError as e:
            raise ValueError(f"not a number: {str(e).split(': ', 1)[-1]}") from None
    if len(values) != n_in:
        raise ValueError(f"expected {n_in} value{'s' if n_in != 1 else ''}, got {len(values)}")
    with np.errstate(over="ignore"):
        try:
            x = np.asarray([float(v) for v in values], dtype=np.float64).astype(np.float32)
        except OverflowError:  # a JSON integer beyond float range
            x = np.array([np.inf], np.float32)
    if not np.isfinite(x).all():  # checked as float32, the model's dtype: 1e39 is infinite there
        raise ValueError("NaN or infinite value (or beyond float32 range)")
    return x


def step_record(t: int, y: np.ndarray, kind: str) -> dict:
    rec = {"step": t, "y": [round(float(v), 7) for v in y]}
    if kind == "logits":
        z = np.exp(y - y.max())
        p = z / z.sum()
        k = int(p.argmax())
        rec.update(pred=k, prob=round(float(p[k]), 7))
    return rec


def stream(sess, lines, out, every: int = 1, final: bool = False, reset_on_blank: bool = True,
           skip_bad: bool = False, scale: float | None = None, err=sys.stderr) -> int:
    """The stdin protocol: one timestep per line in, one JSON line per (reported) step out, flushed at once.
    Returns the number of bad lines skipped; raises StreamInputError on the first bad line unless ``skip_bad``."""
    kind = sess.contract.output_kind
    n_in = sess.n_in
    sess.reset(1)
    t, last, skipped = 0, None, 0

    def emit(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    def end_sequence():
        nonlocal t, last
        if final and last is not None:
            emit(last)
        t, last = 0, None
        sess.reset(1)

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            if reset_on_blank and t:
                end_sequence()
            continue
        try:
            values = parse_line(line, n_in)
        except ValueError as e:
            if not skip_bad:
                raise StreamInputError(f"line {lineno}: {e}") from None
            skipped += 1
            err.write(json.dumps({"line": lineno, "error": str(e)}) + "\n")
            err.flush()
            continue
        x = values
        if scale is not None:
            x *= np.float32(scale)
        y = sess.step(x)
        rec = step_record(t, y, kind)
        t += 1
        last = rec
        if not final and t % every == 0:
            emit(rec)
    if final and last is not None:
        emit(last)
    return skipped


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--stream", "stream_mode", is_flag=True,
              help="Read one timestep per line from stdin, write one JSON line per step to stdout.")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="Batched offline run over a .npy of sequences [batch, T, n_in] (or [T, n_in]).")
@click.option("--output", "output_path", type=click.Path(dir_okay=False),
              help="With --input: write all outputs [batch, T, n_out] to this .npy.")
@click.option("--raw", is_flag=True, help="Inputs are raw values: apply the model's input.scale (and, with "
              "--input, its input.permutation) first.")
@click.option("--every", type=click.IntRange(1), default=1, show_default=True, help="--stream: report every K-th step.")
@click.option("--final", is_flag=True, help="--stream: report only the last step of each sequence.")
@click.option("--reset-on-blank/--no-reset-on-blank", default=True, show_default=True,
              help="--stream: a blank line ends the sequence and starts a new one from the initial state.")
@click.option("--skip-bad", is_flag=True, help="--stream: report a malformed line on stderr and go on.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@_provider_option
def run_cmd(model, stream_mode, input_path, output_path, raw, every, final, reset_on_blank, skip_bad, threads,
            provider):
    """Run an exported model: stream stdin one timestep at a time, or a batch of sequences from a .npy file.

    \b
    Stream protocol (--stream): each stdin line is one timestep of n_in numbers, separated by spaces or commas,
    or a JSON array. Each output line is JSON: {"step": t, "y": [...]}, plus "pred" and "prob" for classifiers.
    Lines are flushed as they are written, so a producer may wait between steps. EOF ends cleanly.
    A malformed line stops with an error naming its line number (exit 2), unless --skip-bad.
    \b
    Example: wavexport sample model.onnx --index 0 | wavexport run model.onnx --stream --final
    """
    if stream_mode == bool(input_path):
        raise click.UsageError("give exactly one of --stream or --input")
    sess = _session(model, threads, _providers(provider))
    c = sess.contract
    if stream_mode:
        if raw and c.permutation is not None:
            raise StreamInputError("--raw with --stream cannot apply input.permutation (it reorders whole "
                                   "sequences): send the steps in permuted order, or use --input")
        try:
            stream(sess, sys.stdin, sys.stdout, every, final, reset_on_blank, skip_bad,
                   c.input_scale if raw else None)
        except BrokenPipeError:  # the consumer went away: stop quietly (Python's documented recipe: point stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # at devnull so exit's flush is silent)
        return
    from ..npyio import read_npy

    xs = read_npy(input_path)
    single = False
    if raw:  # [batch, T, n_in], or [batch, T] when n_in is 1 (e.g. raster-order pixels)
        xs = c.prepare_inputs(xs)
    elif xs.ndim == 2:
        xs, single = xs[None], True
    if xs.ndim != 3 or 0 in xs.shape[:2]:
        raise StreamInputError(f"{input_path}: shape {list(xs.shape)}; expected [batch, T, {c.input_size}] with "
                               "batch and T at least 1" + (" ([batch, T] raw values with --raw)" if raw else ""))
    if not np.issubdtype(xs.dtype, np.floating):
        raise StreamInputError(f"{input_path}: dtype {xs.dtype}; raw integer data needs --raw")
    sess.reset(xs.shape[0])
    ys = sess.feed(xs.astype(np.float32))
    if output_path:
        from ..training.checkpoint import atomic_write

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, ys[0] if single else ys)

        atomic_write(output_path, write)
    summary = {"sequences": int(xs.shape[0]), "steps": int(xs.shape[1]), "output": output_path}
    if c.output_kind == "logits":
        summary["pred"] = ys[:, -1].argmax(-1).tolist()
    else:
        summary["y"] = ys[:, -1].tolist()
    click.echo(json.dumps(summary))


# --- sample ------------------------------------------------------------------------------------------------------
@click.command("sample")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--index", type=click.IntRange(0), default=0, show_default=True, help="Which test sample.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root (image tasks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic tasks: the draw.")
def sample_cmd(model, index, data_dir, seed):
    """Print one test sequence of the model's task, one timestep per line, ready for `run --stream`.

    The permutation and scaling of the model's metadata are applied; the label goes to stderr.
    """
    from ..exporters.contract import read_contract
    from ..training.trainer import MAX_HELD_OUT
    from .evaluate import task_batches

    c = read_contract(model)
    if index >= MAX_HELD_OUT:
        raise StreamInputError(f"--index must be below {MAX_HELD_OUT}")
    xs, y = next(task_batches(c, 1, data_dir, seed, offset=index), (None, None))
    if xs is None:
        raise StreamInputError(f"--index {index} is past the end of the test set")
    out = sys.stdout
    for row in xs[0]:
        out.write(" ".join(f"{v:.7g}" for v in row) + "\n")
    click.echo(f"label: {y[0].tolist()}", err=True)


# --- eval of an ONNX file ----------------------------------------------------------------------------------------
def eval_onnx(path, split, data_dir, limit, provider, progress: bool):
    """(metrics, contract) of an exported model on its task's test set."""
    from tqdm import tqdm

    from .evaluate import evaluate_streamer, task_batches

    if split != "test":
        raise StreamInputError("an exported model carries no validation split: use --split test")
    sess = _session(path, providers=_providers(provider))
    n = limit or (10_000 if sess.contract.task in ("smnist", "psmnist", "nscifar10") else 1000)
    with tqdm(total=n, desc="eval (onnx)", unit="seq", disable=not progress, leave=False) as bar:
        return evaluate_streamer(sess, task_batches(sess.contract, n, data_dir), progress=bar.update), sess.contract


# --- bench -------------------------------------------------------------------------------------------------------
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


def bench(path, batches=(1,), steps=2000, chunk=64, threads=1, checkpoint=None, providers=None) -> dict:
    """Per-step latency of the ONNX session and of the eager PyTorch step of the same model, in one run."""
    import torch

    from ..models import build_model
    from ..training import load_checkpoint, model_from_checkpoint

    sess = _session(path, threads, providers)
    c = sess.contract
    torch.set_num_threads(threads)
    if checkpoint:
        model = model_from_checkpoint(load_checkpoint(checkpoint))[0]
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


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--batch", "batches", default="1,64", show_default=True, callback=int_list,
              help="Comma-separated batch sizes.")
@click.option("--steps", type=click.IntRange(10), default=2000, show_default=True, help="Timed steps per batch.")
@click.option("--chunk", type=click.IntRange(1), default=64, show_default=True, help="Steps per feed() call.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for ORT and torch.")
@click.option("--checkpoint", type=click.Path(), help="Time the torch step with these weights (default: the "
              "same architecture, freshly initialised: the same work per step).")
@click.option("--json", "as_json", is_flag=True)
@_provider_option
def bench_cmd(model, batches, steps, chunk, threads, checkpoint, as_json, provider):
    """Per-step latency (median, p90, p99) and throughput of an exported model, next to its eager PyTorch step."""
    if not batches or min(batches) < 1:
        raise click.BadParameter("batch sizes must be >= 1", param_hint="--batch")
    report = bench(model, batches, steps, chunk, threads, checkpoint, _providers(provider))
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['model']} ({report['arch']}, {report['task']}, {report['format']}, "
               f"quantization {report['quantization']}) | {threads} thread(s) | {', '.join(report['providers'][:1])}")
    click.echo(f"{'batch':>5}  {'onnx step µs (median/p90/p99)':>30}  {'feed/step µs':>12}  "
               f"{'torch step µs':>13}  {'speedup':>7}  {'steps/s':>10}")
    for r in report["results"]:
        o, f, t = r["onnx_step"], r["onnx_feed_per_step"], r["torch_step"]
        click.echo(f"{r['batch']:>5}  {o['median_us']:>10.1f} / {o['p90_us']:>7.1f} / {o['p99_us']:>7.1f}  "
                   f"{f['median_us']:>12.2f}  {t['median_us']:>13.1f}  {r['speedup_vs_torch']:>6.2f}x  "
                   f"{r['throughput_steps_per_s']:>10,.0f}")
