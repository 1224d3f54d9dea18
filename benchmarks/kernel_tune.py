"""Tuning table of the fused Wave-RNN Triton kernels (wavexport.models.triton_rnn) on one CUDA GPU.

    python benchmarks/kernel_tune.py [--shape psmnist|adding|copy] [--reps 5] [--json]

For one paper shape at batch 128 it times the forward kernel, the backward kernel and ``conv_param_grads`` (the
weight gradients as products over all timesteps) for each tuning choice (num_warps, block_n, input_precision), with
CUDA events after a warm-up call that compiles, and reports the error of each choice against a float64 torch
reference of the same recurrence: the tolerance the training path needs is 1e-5 relative. Needs CUDA and Triton.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

# T, C, N (k = 3); "tiny" lets a CPU dry run (TRITON_INTERPRET=1) check the script itself.
SHAPES = {"psmnist": (784, 16, 256), "adding": (100, 27, 100), "copy": (100, 6, 100), "tiny": (4, 16, 16)}
CHOICES = [  # (num_warps, block_n, input_precision); None = the launcher's default
    (None, None, "ieee"), (4, None, "ieee"), (8, 128, "ieee"), (4, 128, "ieee"), (None, 64, "ieee"),
    (None, None, "tf32x3"), (None, None, "tf32"),
]
BATCH = 128


def _time(fn, reps: int) -> float:
    fn()  # compiles
    if not torch.cuda.is_available():  # the interpreter's dry run: wall time, meaningless but exercised
        import time
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def _rel(a: torch.Tensor, e: torch.Tensor) -> float:
    return float((a.double() - e).abs().max() / e.abs().max().clamp_min(1e-30))


def main(argv=None) -> int:
    from wavexport.models import triton_rnn as tr

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="psmnist", choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=BATCH, help="batch size (the paper's 128; smaller for a dry run)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true", help="three choices (default, 4 warps, tf32x3): fewer compiles")
    args = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not tr.available(dev):
        print("kernel_tune: needs a CUDA GPU and Triton (or TRITON_INTERPRET=1 for a dry run)", file=sys.stderr)
        return 2
    T, C, N = SHAPES[args.shape]
    g = torch.Generator().manual_seed(0)
    U = (0.1 * torch.randn(args.batch, T, C, N, generator=g, dtype=torch.float64)).to(dev)
    h0 = torch.rand(args.batch, C, N, generator=g, dtype=torch.float64).to(dev)
    W = (torch.randn(C, C, 3, generator=g, dtype=torch.float64) * (1.0 / (3 * C) ** 0.5)).to(dev)
    bias = (0.01 * torch.randn(C, generator=g, dtype=torch.float64)).to(dev)
    G = (torch.randn(args.batch, T, C, N, generator=g, dtype=torch.float64) / T).to(dev)
    with torch.no_grad():
        H64 = tr.reference_forward(U, h0, W, bias)
        dU64, dh064 = tr.reference_backward(G, H64, h0, W)
    U32, h032, W32, b32, G32 = (x.float() for x in (U, h0, W, bias, G))
    H32 = H64.float()
    rows = []
    choices = [CHOICES[0], CHOICES[1], CHOICES[5]] if args.quick else CHOICES
    for warps, block_n, precision in choices:
        knobs = dict(num_warps=warps, block_n=block_n, input_precision=precision)
        try:
            fwd = _time(lambda: tr.wrnn_sequence_forward(U32, h032, W32, b32, **knobs), args.reps)
            bwd = _time(lambda: tr.wrnn_sequence_backward(G32, H32, h032, W32, **knobs), args.reps)
            H = tr.wrnn_sequence_forward(U32, h032, W32, b32, **knobs)
            dU, _ = tr.wrnn_sequence_backward(G32, H32, h032, W32, **knobs)
            row = {"num_warps": warps, "block_n": block_n, "precision": precision, "fwd_ms": 1e3 * fwd,
                   "bwd_ms": 1e3 * bwd, "fwd_rel_err": _rel(H, H64), "bwd_rel_err": _rel(dU, dU64)}
        except Exception as exc:  # a choice this GPU or Triton refuses: recorded, not fatal
            row = {"num_warps": warps, "block_n": block_n, "precision": precision,
                   "error": f"{type(exc).__name__}: {exc}"[:300]}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    dU32 = dU64.float()
    grads = _time(lambda: tr.conv_param_grads(dU32, H32, h032, 3), args.reps)
    report = {"gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)", "torch": torch.__version__,
              "triton": __import__("triton").__version__, "shape": dict(B=args.batch, T=T, C=C, N=N, k=3),
              "choices": rows, "conv_param_grads_ms": 1e3 * grads}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['gpu']}, torch {report['torch']}, triton {report['triton']}, {args.shape} B={args.batch} T={T} C={C} "
          f"N={N} k=3; conv_param_grads {report['conv_param_grads_ms']:.2f} ms")
    print("| num_warps | block_n | precision | forward ms | backward ms | forward rel. err | backward rel. err |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['num_warps']} | {r['block_n']} | {r['precision']} | {r['error']} | | | |")
        else:
            print(f"| {r['num_warps'] or 'default'} | {r['block_n'] or 'default'} | {r['precision']} | "
                  f"{r['fwd_ms']:.2f} | {r['bwd_ms']:.2f} | {r['fwd_rel_err']:.1e} | {r['bwd_rel_err']:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
