"""Tuning table of the fused Wave-RNN Triton kernels (wavexport.models.triton_rnn) on one CUDA GPU.

    python benchmarks/kernel_tune.py [--shape psmnist|adding|copy] [--reps 5] [--json]

For one paper shape at batch 128 it times, for each tuning choice (num_warps, block_n, input_precision): the forward
kernel on encoded inputs U, the forward with the encoder fused (one input feature, as psMNIST), the backward with the
gradient of every state, and the backward as a model reading only the last state trains (its gradient only) with
the weight gradients, by ``conv_param_grads`` (torch products over all timesteps) or accumulated in the kernel
(``fuse=True``, where ``fused_weight_grads`` allows; the dW error is that path's); and ``conv_param_grads`` alone. CUDA events after a warm-up call that compiles; the
error of each choice against a float64 torch reference of the same recurrence (the training path needs 1e-5
relative). Needs CUDA and Triton.
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
    (None, None, None), (8, None, "ieee"), (4, None, "ieee"), (8, None, "tf32x3"), (4, 128, None), (None, 64, None),
    (None, None, "tf32"),
]
QUICK = CHOICES[:4]
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
    ap.add_argument("--quick", action="store_true",
                    help="four choices (the default, 8 and 4 warps with ieee, 8 with tf32x3): fewer compiles")
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
    # The psMNIST training shape: one input feature encoded in the kernel; the loss reads the last state only.
    x = torch.randn(args.batch, T, 1, generator=g, dtype=torch.float64).to(dev)
    enc_w = (torch.randn(C * N, 1, generator=g, dtype=torch.float64) * 0.1).to(dev)
    enc_b = (0.01 * torch.randn(C * N, generator=g, dtype=torch.float64)).to(dev)
    gl = torch.randn(args.batch, C, N, generator=g, dtype=torch.float64).to(dev)
    with torch.no_grad():
        He64 = tr.reference_forward(torch.nn.functional.linear(x, enc_w, enc_b).view(args.batch, T, C, N), h0, W, bias)
        Gl = torch.zeros_like(He64)
        Gl[:, -1] = gl
        dUl64, _ = tr.reference_backward(Gl, He64, h0, W)
        dWl64, _ = tr.conv_param_grads(dUl64, He64, h0, 3)
    x32, ew32, eb32, gl32, He32 = (t.float() for t in (x, enc_w, enc_b, gl, He64))
    rows = []
    for warps, block_n, precision in (QUICK if args.quick else CHOICES):
        knobs = dict(num_warps=warps, block_n=block_n)
        if precision is not None:
            knobs["input_precision"] = precision
        row = {"num_warps": warps, "block_n": block_n, "precision": precision or tr.DEFAULT_PRECISION}
        try:
            row["fwd_ms"] = 1e3 * _time(lambda: tr.wrnn_sequence_forward(U32, h032, W32, b32, **knobs), args.reps)
            row["fwd_enc_ms"] = 1e3 * _time(lambda: tr.wrnn_sequence_forward(
                x32, h032, W32, b32, encoder=(ew32, eb32), **knobs), args.reps)
            row["bwd_ms"] = 1e3 * _time(lambda: tr.wrnn_sequence_backward(G32, H32, h032, W32, **knobs), args.reps)
            for name, fuse in (("bwd_grads_ms", False), ("bwd_fused_ms", True)):
                row[name] = 1e3 * _time(lambda: tr.wrnn_sequence_backward(
                    None, He32, h032, W32, g_last=gl32, weight_grads=True, fuse=fuse, **knobs), args.reps)
            H = tr.wrnn_sequence_forward(U32, h032, W32, b32, **knobs)
            He = tr.wrnn_sequence_forward(x32, h032, W32, b32, encoder=(ew32, eb32), **knobs)
            dU, _ = tr.wrnn_sequence_backward(G32, H32, h032, W32, **knobs)
            _, _, dW, _ = tr.wrnn_sequence_backward(None, He32, h032, W32, g_last=gl32, weight_grads=True, fuse=True,
                                                    **knobs)
            row.update(fwd_rel_err=_rel(H, H64), fwd_enc_rel_err=_rel(He, He64), bwd_rel_err=_rel(dU, dU64),
                       dw_rel_err=_rel(dW, dWl64))
        except Exception as exc:  # a choice this GPU or Triton refuses: recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    dU32 = dU64.float()
    grads = _time(lambda: tr.conv_param_grads(dU32, H32, h032, 3), args.reps)
    report = {"gpu": torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)", "torch": torch.__version__,
              "triton": __import__("triton").__version__, "shape": dict(B=args.batch, T=T, C=C, N=N, k=3),
              "fused_weight_grads": tr.fused_weight_grads(C, N, 3), "choices": rows,
              "conv_param_grads_ms": 1e3 * grads}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['gpu']}, torch {report['torch']}, triton {report['triton']}, {args.shape} B={args.batch} T={T} C={C} "
          f"N={N} k=3; conv_param_grads {report['conv_param_grads_ms']:.2f} ms; weight gradients in the kernel: "
          f"{report['fused_weight_grads']}")
    print("| num_warps | block_n | precision | forward ms | forward, encoder fused | backward ms | backward, last state "
          "+ weight grads (torch) | same, fused in the kernel | max rel. err (fwd, fwd enc, bwd, dW) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['num_warps'] or 'default'} | {r['block_n'] or 'default'} | {r['precision']} |"
        if "error" in r:
            print(f"{head} {r['error']} | | | | | |")
        else:
            print(f"{head} {r['fwd_ms']:.2f} | {r['fwd_enc_ms']:.2f} | {r['bwd_ms']:.2f} | {r['bwd_grads_ms']:.2f} | {r['bwd_fused_ms']:.2f} | "
                  f"{max(r['fwd_rel_err'], r['fwd_enc_rel_err'], r['bwd_rel_err'], r['dw_rel_err']):.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
