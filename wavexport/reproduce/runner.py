"""Run an experiment's runs: each one an ordinary ``wavexport train`` process on its own run directory.

A subprocess per run keeps runs independent (one thread each, side by side with ``jobs``), and makes an interrupted
experiment resumable by construction: a run directory with a checkpoint is continued with ``--resume``, a finished
one returns at once.
"""
from __future__ import annotations

import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.procs import INTERRUPTED_CODES
from .experiments import RunSpec


@dataclass
class RunOutcome:
    spec: RunSpec
    path: Path
    returncode: int
    skipped: bool = False      # already complete: nothing was run

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def interrupted(self) -> bool:
        return self.returncode in INTERRUPTED_CODES


def run_dir(root: Path, spec: RunSpec) -> Path:
    return Path(root) / "runs" / spec.name


def is_complete(path: Path, spec: RunSpec | None = None) -> bool:
    """Whether the run in ``path`` has used its budget (the spec's, else its own) or stopped solved."""
    from ..checkpoint import run_complete

    return run_complete(path, spec.opts if spec is not None else None)


def train_command(spec: RunSpec, path: Path, threads: int = 1, device: str = "auto") -> list[str]:
    from ..config import train_command as command

    return command(spec.argv(), path, threads, device)


def run_all(specs: list[RunSpec], root: Path, jobs: int = 1, threads: int = 1, device: str = "auto",
            on_start: Callable[[RunSpec], None] | None = None,
            on_done: Callable[[RunOutcome], None] | None = None) -> list[RunOutcome]:
    """Run (or resume) every spec under ``root/runs/``, ``jobs`` at a time; each run's output goes to its
    ``train.log``. Ctrl-C reaches every child (same process group): each saves a checkpoint and exits 130."""
    lock = threading.Lock()
    stop = threading.Event()

    def one(spec: RunSpec) -> RunOutcome:
        path = run_dir(root, spec)
        if is_complete(path, spec):
            out = RunOutcome(spec, path, 0, skipped=True)
        elif stop.is_set():
            out = RunOutcome(spec, path, 130)
        else:
            path.mkdir(parents=True, exist_ok=True)
            cmd = train_command(spec, path, threads, device)
            if on_start:
                with lock:
                    on_start(spec)
            with open(path / "train.log", "a") as log:
                log.write("$ " + " ".join(cmd[1:]) + "\n")
                log.flush()
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
            if rc in INTERRUPTED_CODES:
                stop.set()
            out = RunOutcome(spec, path, rc)
        if on_done:
            with lock:
                on_done(out)
        return out

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, specs))
