"""Training speed of the paper's models: the plain per-step loop against the fast recurrence, side by side.

    python benchmarks/train_speed.py [--presets NAME,...] [--reps 3] [--threads 1] [--devices cpu,cuda]
                                     [--memory/--no-memory] [--json] [--profile TOP] [--against REV]

One training iteration = forward + backward + Adam step at batch 128 on random inputs of the task's shape (the speed
does not depend on the values). For every preset and device the two implementations alternate in one process
(``plain_recurrence()`` selects the old loop), after one warm-up iteration each, and the script prints the median
seconds per iteration (wall clock and process CPU time), their ratio old/new, the achieved GFLOP/s (the FLOPs of
``wavexport.models.flops.flops_per_iteration``: forward products, backward counted as twice the forward) and that
as a fraction of the fp32 GEMM peak measured in the same run on the same device and threads. On a shared machine
the CPU-time figures are the steady ones (waiting for a core is not counted), so on the CPU the GFLOP/s and the
peak are both per CPU-second; on CUDA, per wall second.

``--memory`` (default on) also runs one psMNIST wRNN iteration of each implementation in its own subprocess and
reports the process's peak resident set size (VmHWM, Linux) and its growth over the resident size just before the
iteration: the memory the iteration itself needed.

``--against REV`` adds a third implementation alternating with the two: the fast recurrence of git revision REV
(its ``wavexport/models/recurrence.py``, loaded beside the current one), to measure a change to the fast path side by
side ("rev/new" is the speed-up of the working tree over REV).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

# name -> (arch, n_in, n_out, steps per sequence, reads only the last step, model sizes). Sizes are the paper's
# (wavexport.config PAPER); sMNIST has psMNIST's shapes, copy's sequences are T + 20 steps.
PRESETS = {
    "psmnist-wrnn": ("wrnn", 1, 10, 784, True, dict(channels=16, ring=256)),
    "psmnist-irnn": ("irnn", 1, 10, 784, True, dict(hidden=256)),
    "adding100-wrnn": ("wrnn", 2, 1, 100, True, dict(channels=27, ring=100)),
    "adding100-irnn": ("irnn", 2, 1, 100, True, dict(hidden=100)),
    "adding1000-wrnn": ("wrnn", 2, 1, 1000, True, dict(channels=27, ring=100)),
    "adding1000-irnn": ("irnn", 2, 1, 1000, True, dict(hidden=100)),
    "copy80-wrnn": ("wrnn", 10, 10, 100, False, dict(channels=6, ring=100)),
    "copy480-wrnn": ("wrnn", 10, 10, 500, False, dict(channels=6, ring=100)),
}
BATCH = 128


def model_config(name: str) -> dict:
    from wavexport.models import resolve_config

    arch, n_in, n_out, _, _, size = PRESETS[name]
    return resolve_config(arch, n_in, n_out, **size)


def iteration_flop(name: str) -> float:
    """The project's one FLOP count (wavexport.models.flops): forward products, backward as twice the forward."""
    from wavexport.models.flops import flops_per_iteration

    _, _, _, T, last_only, _ = PRESETS[name]
    return flops_per_iteration(model_config(name), T, 1 if last_only else T, BATCH)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> float:
    """Process CPU time on the CPU (steady on a shared machine: waiting for a core is not counted), else wall."""
    return time.process_time() if device.type == "cpu" else time.perf_counter()


def gemm_peak(device: torch.device) -> float:
    """Best fp32 GFLOP/s of square torch.mm products (512 and 1024; 4096 on CUDA) on the current threads, per
    ``_clock`` second: on the CPU, per CPU-second, like the presets' figures it is compared with."""
    best = 0.0
    for n in ((4096,) if device.type == "cuda" else (512, 1024)):
        a = torch.randn(n, n, device=device)
        b = torch.randn(n, n, device=device)
        torch.mm(a, b)
        reps = max(1, int(2e9 / (2 * n ** 3))) if device.type == "cpu" else 20
        for _ in range(3):
            _sync(device)
            t = _clock(device)
            for _ in range(reps):
                torch.mm(a, b)
            _sync(device)
            best = max(best, 2 * n ** 3 * reps / (_clock(device) - t) / 1e9)
    return best


def make_iteration(name: str, device: torch.device, seed: int = 0):
    """(model, one-iteration function) for a preset: random inputs and targets of the task's shapes."""
    from wavexport.models import build_model

    _, n_in, n_out, T, last_only, _ = PRESETS[name]
    torch.manual_seed(seed)
    model = build_model(model_config(name)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(BATCH, T, n_in, generator=g).to(device)
    if n_out == 1:
        target = torch.rand(BATCH, 1, 1, generator=g).to(device)
        loss_fn = torch.nn.functional.mse_loss
    else:
        target = torch.randint(0, n_out, (BATCH, 1 if last_only else T), generator=g).to(device)

        def loss_fn(ys, y):
            return torch.nn.functional.cross_entropy(ys.flatten(0, 1), y.flatten())

    def step():
        opt.zero_grad(set_to_none=True)
        ys, _ = model(xs, last_only=last_only)
        loss_fn(ys, target).backward()
        opt.step()

    return model, step


_AGAINST: dict = {}  # "rev": a context manager running REV's fast recurrence (set by --against)


def modes_for(device: torch.device) -> dict:
    """old: the plain per-step loop; new: what ``model(xs)`` runs (the fast recurrence; on CUDA the Wave-RNN's Triton
    kernels and cuDNN for the iRNN, see ``recurrence.wave_fast``); rev: REV's fast recurrence (``--against``)."""
    from wavexport.models.recurrence import plain_recurrence

    return {"old": plain_recurrence, "new": contextlib.nullcontext, **_AGAINST}


def recurrence_at(rev: str):
    """A context manager under which models run git revision ``rev``'s fast recurrence: its recurrence.py loaded as
    a module of wavexport.models (its relative imports resolve there), its two sequence functions swapped in."""
    import importlib.util
    import tempfile

    from wavexport.models import recurrence

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        source = subprocess.run(["git", "show", f"{rev}:wavexport/models/recurrence.py"], cwd=root, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"error: --against {rev}: {getattr(e, 'stderr', '') or e}".strip())
    path = os.path.join(tempfile.mkdtemp(prefix="recurrence-"), "recurrence_rev.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("wavexport.models._recurrence_rev", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    @contextlib.contextmanager
    def run_rev():
        saved = recurrence.wave_sequence, recurrence.irnn_sequence
        recurrence.wave_sequence, recurrence.irnn_sequence = module.wave_sequence, module.irnn_sequence
        try:
            yield
        finally:
            recurrence.wave_sequence, recurrence.irnn_sequence = saved
    return run_rev


def time_preset(name: str, device: torch.device, reps: int) -> dict:
    _, step = make_iteration(name, device)
    modes = modes_for(device)
    times = {m: [] for m in modes}
    peak_mb = {}
    for r in range(reps + 1):  # round 0 warms up (and compiles the kernels)
        for mode, ctx in modes.items():
            with ctx():
                _sync(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                w, c = time.perf_counter(), time.process_time()
                step()
                _sync(device)
                w, c = time.perf_counter() - w, time.process_time() - c
                if device.type == "cuda":
                    peak_mb[mode] = torch.cuda.max_memory_allocated(device) / 2 ** 20
            if r:
                times[mode].append((w, c))
    flop = iteration_flop(name)
    out = {"preset": name, "device": device.type, "reps": reps, "gflop_per_iteration": flop / 1e9}
    for mode in modes:
        wall = statistics.median(t[0] for t in times[mode])
        cpu = statistics.median(t[1] for t in times[mode])
        out[mode] = {"wall_s": wall, "cpu_s": cpu, "wall_min_s": min(t[0] for t in times[mode]),
                     "gflops": flop / (cpu if device.type == "cpu" else wall) / 1e9}
        if mode in peak_mb:
            out[mode]["peak_mb"] = peak_mb[mode]
    out["ratio_wall"] = out["old"]["wall_s"] / out["new"]["wall_s"]
    out["ratio_cpu"] = out["old"]["cpu_s"] / out["new"]["cpu_s"]
    if "rev" in out:
        out["ratio_rev_cpu"] = out["rev"]["cpu_s"] / out["new"]["cpu_s"]
    if name.startswith(("psmnist", "smnist")):  # the paper's epoch: 57,000 training images at batch 128
        out["epoch_s"] = {mode: math.ceil(57000 / BATCH) * out[mode]["wall_s"] for mode in modes}
    return out


def profile_preset(name: str, device: torch.device, top: int) -> str:
    """torch.profiler's table of one iteration of what ``model(xs)`` runs (after a warm-up iteration), its ``top``
    costliest operators by self time on the device (CUDA kernels on a GPU): where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    _, step = make_iteration(name, device)
    step()
    _sync(device)
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        _sync(device)
    events = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",)):
        try:
            return events.table(sort_by=key, row_limit=top)
        except (AttributeError, KeyError, ValueError):  # the key's name differs between torch releases
            continue
    return events.table(row_limit=top)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(mode: str, name: str) -> None:
    """One iteration in this (fresh) process; prints its memory figures as JSON.

    The peak is VmHWM of /proc/self/status, this process's own high-water mark. Not getrusage's ru_maxrss: Linux
    carries that over exec from the forked parent, so a child of a big benchmark process reports the parent's size."""
    from wavexport.models.recurrence import plain_recurrence

    _, step = make_iteration(name, torch.device("cpu"))
    before = _status_kb("VmRSS")
    with plain_recurrence() if mode == "old" else contextlib.nullcontext():
        step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"mode": mode, "peak_rss_mb": peak / 1024, "before_mb": before / 1024,
                      "iteration_mb": (peak - before) / 1024}))


def measure_memory(name: str, threads: int) -> dict:
    out = {"preset": name}
    for mode in ("old", "new"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", mode, "--presets", name,
               "--threads", str(threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_avg": os.getloadavg()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated, from: {', '.join(PRESETS)}")
    ap.add_argument("--reps", type=int, default=3, help="timed iterations per implementation (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--devices", default=None, help="comma-separated (default: cpu, and cuda when present)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="peak memory of a psMNIST wRNN iteration, old vs new, in subprocesses")
    ap.add_argument("--memory-preset", default="psmnist-wrnn", choices=list(PRESETS))
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP",
                    help="also profile one iteration of the new implementation per preset: its TOP costliest "
                         "operators, to stderr and into each result's 'profile' in the JSON")
    ap.add_argument("--against", metavar="REV", help="also time git revision REV's fast recurrence, side by side")
    ap.add_argument("--memory-child", choices=["old", "new"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    _AGAINST.clear()
    if args.against:
        _AGAINST["rev"] = recurrence_at(args.against)
    torch.set_num_threads(args.threads)
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    if args.memory_child:
        memory_child(args.memory_child, presets[0])
        return 0
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    report = {"machine": machine(), "threads": args.threads, "batch": BATCH, "peak_gflops": {}, "results": []}
    if args.against:
        report["against"] = args.against
    for dev in map(torch.device, devices):
        peak = gemm_peak(dev)
        results = []
        for name in presets:
            r = time_preset(name, dev, args.reps)
            results.append(r)
            print(f"{name} {dev.type}: " + ", ".join(f"{m} {r[m]['wall_s']:.4f} s" for m in modes_for(dev)),
                  file=sys.stderr, flush=True)
            if args.profile > 0:
                r["profile"] = profile_preset(name, dev, args.profile)
                print(r["profile"], file=sys.stderr, flush=True)
        # The peak again at the end (on a shared machine it drifts): the better of the two.
        peak = report["peak_gflops"][dev.type] = max(peak, gemm_peak(dev))
        for r in results:
            for mode in modes_for(dev):
                r[mode]["fraction_of_peak"] = r[mode]["gflops"] / peak
        report["results"] += results
    if args.memory:
        report["memory"] = measure_memory(args.memory_preset, args.threads)
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 0


def table(report: dict) -> str:
    m = report["machine"]
    lines = [f"{m['date']}  {m['cpu']} ({m['cores']} cores), torch {m['torch']}, {report['threads']} thread(s), "
             f"batch {report['batch']}, load average {' '.join(f'{x:.1f}' for x in m['load_avg'])}",
             "fp32 GEMM peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in report["peak_gflops"].items())
             + " (CPU: per CPU-second)", "",
             "| preset | device | old s/it (cpu) | new s/it (cpu) | old/new wall | old/new cpu | GFLOP/s old -> new "
             "| % of peak old -> new |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        o, n = r["old"], r["new"]
        lines.append(f"| {r['preset']} | {r['device']} | {o['wall_s']:.4f} ({o['cpu_s']:.3f}) | "
                     f"{n['wall_s']:.4f} ({n['cpu_s']:.3f}) | {r['ratio_wall']:.2f}x | {r['ratio_cpu']:.2f}x | "
                     f"{o['gflops']:.1f} -> {n['gflops']:.1f} | "
                     f"{100 * o['fraction_of_peak']:.0f}% -> {100 * n['fraction_of_peak']:.0f}% |")
    revs = [r for r in report["results"] if "rev" in r]
    if revs:
        lines += ["", f"| preset | device | {report['against']} s/it (cpu) | new s/it (cpu) | rev/new cpu |",
                  "|---|---|---|---|---|"]
        for r in revs:
            lines.append(f"| {r['preset']} | {r['device']} | {r['rev']['wall_s']:.4f} ({r['rev']['cpu_s']:.3f}) | "
                         f"{r['new']['wall_s']:.4f} ({r['new']['cpu_s']:.3f}) | {r['ratio_rev_cpu']:.2f}x |")
    cuda = [r for r in report["results"] if r["device"] == "cuda"]
    if cuda:
        lines += ["", "| preset (CUDA) | peak GPU memory old -> new (MB) | paper epoch old -> new (s) |", "|---|---|---|"]
        for r in cuda:
            epoch = f"{r['epoch_s']['old']:.1f} -> {r['epoch_s']['new']:.1f}" if "epoch_s" in r else "-"
            lines.append(f"| {r['preset']} | {r['old']['peak_mb']:.0f} -> {r['new']['peak_mb']:.0f} | {epoch} |")
    if "memory" in report:
        mem = report["memory"]
        lines += ["", f"peak RSS of one {mem['preset']} iteration (own subprocess each): "
                  f"old {mem['old']['peak_rss_mb']:.0f} MB (+{mem['old']['iteration_mb']:.0f} MB during it), "
                  f"new {mem['new']['peak_rss_mb']:.0f} MB (+{mem['new']['iteration_mb']:.0f} MB)"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
