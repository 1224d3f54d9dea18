"""Streaming speed of the psMNIST paper-size wRNN (16x256) through the Python API, measured side by side.

    python benchmarks/stream_speed.py [--checkpoint CKPT] [--steps 5000] [--threads 1]

Exports the step and the sequence graph of the model (a freshly initialised paper-size wRNN unless --checkpoint is
given: the work per step does not depend on the weights), then times, in one run and one process:
``StreamingSession.step`` at batch 1 (and 64), ``feed`` in chunks of 64 steps, and the eager PyTorch ``step``.
Prints the figures, the ratios and the issue's targets (<= 15 µs per step, >= 3x eager torch, feed <= 8 µs/step).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch


def paper_checkpoint(path: str) -> str:
    """A checkpoint of the paper-size psMNIST wRNN, untrained, in the trainer's format."""
    from wavexport.checkpoint import Checkpoint
    from wavexport.config import build_run, make_config

    cfg = make_config("psmnist", "wrnn", "paper")
    torch.manual_seed(cfg.seed)
    run = build_run(cfg)
    Checkpoint.of(run.model, run.model_config, run.task, cfg).save(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a psMNIST wRNN checkpoint (default: untrained paper-size model)")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from wavexport.exporters.pipeline import export_checkpoint
    from wavexport.runtime.bench import bench

    with tempfile.TemporaryDirectory() as d:
        ckpt = args.checkpoint or paper_checkpoint(os.path.join(d, "paper.pt"))
        files = {}
        for mode in ("step", "sequence"):
            t0 = time.perf_counter()
            files[mode] = os.path.join(d, f"{mode}.onnx")
            export_checkpoint(ckpt, files[mode], mode=mode, verify=False)
            files[mode + "_export_s"] = time.perf_counter() - t0
        step = bench(files["step"], (1, 64), args.steps, 64, args.threads)
        seq = bench(files["sequence"], (1,), max(args.steps // 5, 200), 64, args.threads)

    b1, b64, s1 = step["results"][0], step["results"][1], seq["results"][0]
    report = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}, "
                   f"torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "step_b1_median_us": b1["onnx_step"]["median_us"],
        "step_b1_p90_us": b1["onnx_step"]["p90_us"],
        "step_b1_p99_us": b1["onnx_step"]["p99_us"],
        "torch_step_b1_median_us": b1["torch_step"]["median_us"],
        "speedup_vs_torch_b1": b1["speedup_vs_torch"],
        "feed64_step_graph_us_per_step": b1["onnx_feed_per_step"]["median_us"],
        "feed64_sequence_graph_us_per_step": s1["onnx_feed_per_step"]["median_us"],
        "step_b64_median_us": b64["onnx_step"]["median_us"],
        "torch_step_b64_median_us": b64["torch_step"]["median_us"],
        "throughput_b64_steps_per_s": b64["throughput_steps_per_s"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['machine']} | {report['date']} | {args.threads} thread(s)")
    print(f"wRNN 16x256 step, batch 1: median {report['step_b1_median_us']:.1f} µs "
          f"(p90 {report['step_b1_p90_us']:.1f}, p99 {report['step_b1_p99_us']:.1f})   target <= 15 µs")
    print(f"eager torch step, batch 1: median {report['torch_step_b1_median_us']:.1f} µs  -> ONNX is "
          f"{report['speedup_vs_torch_b1']:.2f}x faster   target >= 3x")
    print(f"feed, chunks of 64: step graph {report['feed64_step_graph_us_per_step']:.1f} µs/step, sequence graph "
          f"{report['feed64_sequence_graph_us_per_step']:.1f} µs/step   target <= 8 µs/step")
    print(f"batch 64: {report['step_b64_median_us']:.0f} µs per step (torch {report['torch_step_b64_median_us']:.0f}),"
          f" {report['throughput_b64_steps_per_s']:,.0f} sample-steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
