"""Training runs for ``wavexport plot curves``: their ``metrics.jsonl`` records and a label saying what each run is."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .waves import PlotError, describe_model

NOT_METRICS = ("step", "epoch", "solved")


@dataclass
class Run:
    path: Path
    records: list[dict]
    train_config: dict = field(default_factory=dict)
    model_config: dict = field(default_factory=dict)
    task: dict = field(default_factory=dict)

    def metrics(self) -> list[str]:
        """Numeric keys of its records, in first-seen order."""
        keys: dict[str, None] = {}
        for rec in self.records:
            for k, v in rec.items():
                if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.setdefault(k)
        return list(keys)

    def series(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x, value) of the records that carry ``metric`` (``test_*`` only appears at new bests)."""
        xs, ys = [], []
        for rec in self.records:
            v = rec.get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and x in rec:
                xs.append(rec[x])
                ys.append(float(v))
        return xs, ys


def load_run(path: str | Path) -> Run:
    """A run directory (or its metrics.jsonl), with the configs of its checkpoint when one is there."""
    p = Path(path)
    if not p.exists():
        raise PlotError(f"{p}: no such run directory")
    if p.is_file() and p.suffix != ".jsonl":
        raise PlotError(f"{p} is a file: give the run directory (the one holding metrics.jsonl)")
    log = p if p.is_file() else p / "metrics.jsonl"
    if not log.is_file():
        raise PlotError(f"{p} has no metrics.jsonl (is it a run directory written by `wavexport train`?)")
    try:
        text = log.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlotError(f"{log} cannot be read as text ({e})") from None
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlotError(f"{log}:{i}: not a JSON line ({e.msg})") from None
        if not isinstance(rec, dict):
            raise PlotError(f"{log}:{i}: expected a JSON object per line")
        records.append(rec)
    if not records:
        raise PlotError(f"{log} is empty: the run has not evaluated yet")
    run = Run(log.parent, records)
    for name in ("checkpoint.pt", "best.pt"):
        if (log.parent / name).is_file():
            from ..checkpoint import Checkpoint, CheckpointError
            try:
                ck = Checkpoint.load(log.parent / name)
            except CheckpointError:
                continue  # a damaged checkpoint still leaves the curves worth plotting; the label falls back
            run.train_config = ck.train_config.to_dict()
            run.model_config = dict(ck.model_config)
            run.task = dict(ck.task)
            break
    return run


def run_labels(runs: list[Run]) -> list[str]:
    """``copyrun: wrnn 6×40, lr 0.001``: the run directory's name, then arch, size and learning rate from its
    checkpoint (the task too when the runs differ in task)."""
    def task_of(r: Run) -> str:
        name = r.task.get("name") or r.train_config.get("task") or "?"
        args = r.task.get("args") or {}
        return f"{name} T={args['T']}" if "T" in args else name

    tasks = {task_of(r) for r in runs}
    bodies = []
    for r in runs:
        if not r.model_config:
            bodies.append("")
            continue
        parts = [describe_model(r.model_config)]
        if "lr" in r.train_config:
            parts.append(f"lr {r.train_config['lr']:g}")
        if len(tasks) > 1:
            parts.insert(0, task_of(r))
        bodies.append(", ".join(parts))
    labels = []
    for r, body in zip(runs, bodies):
        name = r.path.name or str(r.path)
        labels.append(f"{name}: {body}" if body else name)
    return labels


def check_metric(runs: list[Run], metric: str | None) -> str:
    """The metric to plot: the one asked for (every run must have it), else val_acc, else val_loss."""
    have = [r.metrics() for r in runs]
    if metric is None:
        for m in ("val_acc", "val_loss"):
            if all(m in h for h in have):
                return m
        metric = "val_loss"
    common = [m for m in have[0] if all(m in h for h in have[1:])]
    for r, h in zip(runs, have):
        if metric not in h:
            avail = ", ".join(common if len(runs) > 1 else h) or "none"
            raise PlotError(f"{r.path} has no metric {metric!r} in metrics.jsonl; available"
                            f"{' in every run' if len(runs) > 1 else ''}: {avail}")
    return metric
