"""What a second thread buys a training iteration: the fast recurrence at 1 and at N threads, side by side.

    python benchmarks/thread_scaling.py [--presets NAME,...] [--threads 2] [--reps 2] [--json]

For each preset of ``train_speed.py`` (one training iteration: forward, backward, Adam, batch 128) the thread counts
alternate in one process, after one warm-up iteration each; the script prints the median wall seconds per
iteration at each count and the ratio. Run it on an otherwise idle machine: a thread that waits for a core another
job holds stalls every step (docs/CLI.md#threads), which is what ``train``'s default thread rule avoids.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # noqa: E402  (the presets and the iteration they time)


def scale(name: str, threads: int, reps: int) -> dict:
    _, step = train_speed.make_iteration(name, torch.device("cpu"))
    counts = (1, threads)
    times: dict[int, list[float]] = {n: [] for n in counts}
    for r in range(reps + 1):  # round 0 warms up
        for n in counts:
            torch.set_num_threads(n)
            t = time.perf_counter()
            step()
            if r:
                times[n].append(time.perf_counter() - t)
    one, many = statistics.median(times[1]), statistics.median(times[threads])
    return {"preset": name, "threads": threads, "one_s": one, "many_s": many, "speedup": one / many}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=",".join(train_speed.PRESETS))
    ap.add_argument("--threads", type=int, default=2, help="compared with 1 thread")
    ap.add_argument("--reps", type=int, default=2, help="timed iterations per thread count (after one warm-up)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in train_speed.PRESETS]
    if unknown or args.threads < 2:
        ap.error(f"unknown preset(s) {', '.join(unknown)}" if unknown else "--threads must be at least 2")
    report = {"machine": train_speed.machine(), "results": []}
    for name in presets:
        report["results"].append(scale(name, args.threads, args.reps))
        print(f"{name}: done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["machine"]
    print(f"{m['date']}  {m['cpu']} ({m['cores']} cores), torch {m['torch']}, batch {train_speed.BATCH}, load "
          f"average {' '.join(f'{x:.1f}' for x in m['load_avg'])}\n")
    print(f"| preset | 1 thread, s/it | {args.threads} threads, s/it | speed-up |\n|---|---|---|---|")
    for r in report["results"]:
        print(f"| {r['preset']} | {r['one_s']:.3f} | {r['many_s']:.3f} | {r['speedup']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
