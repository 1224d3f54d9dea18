"""``run`` (stream stdin, or a batch from a .npy), ``sample`` and ``bench``: commands over exported models."""
from __future__ import annotations

import json
import os
import sys

import click
import numpy as np

from ..core.errors import InputError
from ..core.io import check_onnx_file, check_output
from .common import int_list, provider_option


def _session(path, threads=1, provider="cpu"):
    from ..runtime import StreamingSession, providers_for

    return StreamingSession(path, providers=providers_for(provider), threads=threads)


# --- run ---------------------------------------------------------------------------------------------------------
@click.command("run")
@click.argument("model", type=click.Path())
@click.option("--stream", "stream_mode", is_flag=True,
              help="Read one timestep per line from stdin, write one JSON line per step to stdout.")
@click.option("--input", "input_path", type=click.Path(),
              help="Batched offline run over a .npy of sequences [batch, T, n_in] (or [T, n_in]).")
@click.option("--output", "output_path", type=click.Path(),
              help="With --input: write all outputs [batch, T, n_out] to this .npy (not the model, not the input; "
                   "its folder must exist).")
@click.option("--raw", is_flag=True, help="Inputs are raw values: apply the model's input.scale (and, with "
              "--input, its input.permutation) first.")
@click.option("--every", type=click.IntRange(1), default=1, show_default=True,
              help="--stream: report every K-th step, and always the last step of each sequence.")
@click.option("--final", is_flag=True, help="--stream: report only the steps of each sequence that carry the answer (the last; "
              "the last K for a last:K readout, e.g. copy's 10).")
@click.option("--reset-on-blank/--no-reset-on-blank", default=True, show_default=True,
              help="--stream: a blank line ends the sequence and starts a new one from the initial state.")
@click.option("--skip-bad", is_flag=True, help="--stream: report a malformed line on stderr and go on.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True)
@provider_option
def run_cmd(model, stream_mode, input_path, output_path, raw, every, final, reset_on_blank, skip_bad, threads,
            provider):
    """Run an exported model: stream stdin one timestep at a time, or a batch of sequences from a .npy file.

    \b
    Stream protocol (--stream): each stdin line is one timestep of n_in numbers, separated by spaces or commas,
    or a JSON array (at most 1024 + 512 x n_in characters). Each output line is JSON: {"step": t, "y": [...]},
    plus "pred" and "prob" for classifiers; a non-finite output is null, with "finite": false.
    Lines are flushed as they are written, so a producer may wait between steps. EOF ends cleanly.
    A malformed or too long line stops with an error naming its line number (exit 2), unless --skip-bad.
    \b
    Example: wavexport sample model.onnx --index 0 | wavexport run model.onnx --stream --final
    """
    if stream_mode == bool(input_path):
        raise click.UsageError("give exactly one of --stream or --input")
    if output_path and not input_path:
        raise click.UsageError("--output goes with --input (--stream writes its lines to stdout)")
    check_onnx_file(model)
    if output_path:  # before the run: a wrong --output must not cost the run, nor destroy the model or the input
        check_output(output_path, [("MODEL", model), ("--input", input_path)], suffix=".npy", what="--output")
    sess = _session(model, threads, provider)
    c = sess.contract
    if stream_mode:
        if raw and c.permutation is not None:
            raise InputError("--raw with --stream cannot apply input.permutation (it reorders whole "
                                   "sequences): send the steps in permuted order, or use --input")
        from ..runtime.protocol import stream

        try:
            stream(sess, sys.stdin, sys.stdout, every, final, reset_on_blank, skip_bad,
                   c.input_scale if raw else None)
        except BrokenPipeError:  # the consumer went away: stop quietly (Python's documented recipe: point stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # at devnull so exit's flush is silent)
        return
    from ..core.io import atomic_write, read_npy

    xs = read_npy(input_path)
    single = False
    if raw:  # [batch, T, n_in], or [batch, T] when n_in is 1 (e.g. raster-order pixels)
        xs = c.prepare_inputs(xs)
    elif xs.ndim == 2:
        xs, single = xs[None], True
    if xs.ndim != 3 or 0 in xs.shape[:2]:
        raise InputError(f"{input_path}: shape {list(xs.shape)}; expected [batch, T, {c.input_size}] with "
                               "batch and T at least 1" + (" ([batch, T] raw values with --raw)" if raw else ""))
    if not np.issubdtype(xs.dtype, np.floating):
        raise InputError(f"{input_path}: dtype {xs.dtype}; raw integer data needs --raw")
    from ..evaluation import feed_sequences

    ys = feed_sequences(sess, xs)  # a fixed-batch export takes them in chunks of its batch
    if output_path:
        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, ys[0] if single else ys)

        atomic_write(output_path, write, parents=False)
    summary = {"sequences": int(xs.shape[0]), "steps": int(xs.shape[1]), "output": output_path}
    last = ys[:, -1]
    finite = np.isfinite(last).all(-1)
    if c.output_kind == "logits":  # no prediction from a NaN/inf output: null, never a made-up class 0
        summary["pred"] = [int(row.argmax()) if ok else None for row, ok in zip(last, finite)]
    else:
        summary["y"] = [[float(v) if np.isfinite(v) else None for v in row] for row in last]
    if not finite.all():
        summary["nonfinite"] = [int(i) for i in np.flatnonzero(~finite)]  # sequences whose final output is NaN/inf
    click.echo(json.dumps(summary, allow_nan=False))


# --- sample ------------------------------------------------------------------------------------------------------
@click.command("sample")
@click.argument("model", type=click.Path())
@click.option("--index", type=click.IntRange(0), default=0, show_default=True, help="Which test sample.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Data root (image tasks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic tasks: the draw.")
def sample_cmd(model, index, data_dir, seed):
    """Print one test sequence of the model's task, one timestep per line, ready for `run --stream`.

    The permutation and scaling of the model's metadata are applied; the label goes to stderr.
    """
    from ..core.contract import read_contract
    from ..evaluation import MAX_HELD_OUT, task_from_contract, test_stream

    c = read_contract(model)
    if index >= MAX_HELD_OUT:
        raise InputError(f"--index must be below {MAX_HELD_OUT}")
    xs, y = next(test_stream(task_from_contract(c), seed, "test", n=1, offset=index, data_dir=data_dir),
                 (None, None))
    if xs is None:
        raise InputError(f"--index {index} is past the end of the test set")
    out = sys.stdout
    for row in xs[0].numpy():
        out.write(" ".join(f"{v:.7g}" for v in row) + "\n")
    click.echo(f"label: {y[0].tolist()}", err=True)


# --- bench -------------------------------------------------------------------------------------------------------
@click.command("bench")
@click.argument("model", type=click.Path())
@click.option("--batch", "batches", callback=int_list, metavar="N[,N...]",
              help="Comma-separated batch sizes [default: 1,64; a fixed-batch export: its batch].")
@click.option("--steps", type=click.IntRange(10), default=2000, show_default=True, help="Timed steps per batch.")
@click.option("--chunk", type=click.IntRange(1), default=64, show_default=True, help="Steps per feed() call.")
@click.option("--threads", type=click.IntRange(1), default=1, show_default=True, help="Threads for ORT and torch.")
@click.option("--checkpoint", type=click.Path(), help="Time the torch step with these weights (default: the "
              "same architecture, freshly initialised: the same work per step).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document.")
@provider_option
def bench_cmd(model, batches, steps, chunk, threads, checkpoint, as_json, provider):
    """Per-step latency (median, p90, p99) and throughput of an exported model, next to its eager PyTorch step."""
    if batches is not None and (not batches or min(batches) < 1):
        raise click.BadParameter("batch sizes must be >= 1", param_hint="--batch")
    from ..runtime.bench import bench
    from ..runtime.session import providers_for

    report = bench(model, batches, steps, chunk, threads, checkpoint, providers_for(provider))
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
