"""Starting a sweep here: its folder and study (created, or continued when the folder holds the same sweep), and
``jobs`` workers on this machine that share its storage."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..core.procs import wait_passing_interrupts
from .spec import SweepError, SweepSpec, read_spec_file, write_spec_file
from .study import create_sweep, default_storage, load_sweep, redact
from .worker import INTERRUPTED_RC, Worker

FOLDER_LOCK = ".sweep.lock"


@contextmanager
def _folder_lock(root: Path):
    """Two `wavexport sweep` started at once on one folder: one creates the study, the other then finds it."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(root / FOLDER_LOCK, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare_sweep(spec: SweepSpec, out, storage: str | None = None, study: str | None = None
                  ) -> tuple[str, str, SweepSpec]:
    """Make the sweep folder ``out`` and its study (default: SQLite ``out/sweep.db``, the study named after the
    folder), every trial queued; a folder that holds this same sweep is continued. (storage URL, study, spec)."""
    root = Path(out).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SweepError(f"cannot create the sweep folder {root}: {e.strerror or e}") from None
    previous = read_spec_file(root)
    if previous and storage is None and not str(previous.get("storage", "")).startswith("sqlite"):
        raise SweepError(f"{root} is a sweep on {previous.get('storage')}: pass that --storage to continue it")
    url = storage or default_storage(root)
    name = study or (previous or {}).get("study") or root.name
    spec.root = str(root)
    with _folder_lock(root):
        create_sweep(spec, url, name)
        write_spec_file(root, spec, redact(url), name)
    return url, name, spec


def locate(folder=None, storage: str | None = None, study: str | None = None) -> tuple[str, str | None]:
    """(storage URL, study name or None) from a sweep folder (its sweep.json / sweep.db) and/or explicit options."""
    if storage:
        return storage, study
    if folder is None:
        raise SweepError("name the sweep: its folder, or --storage URL (and --study NAME)")
    root = Path(folder)
    info = read_spec_file(root)
    if info is None and not (root / "sweep.db").is_file():
        raise SweepError(f"{root} is not a sweep folder (no sweep.json or sweep.db)")
    if info and not str(info.get("storage", "sqlite")).startswith("sqlite"):
        raise SweepError(f"{root} is a sweep on {info['storage']}: pass --storage URL (with its password)")
    return default_storage(root), study or (info or {}).get("study")


@dataclass
class LocalRun:
    interrupted: bool = False
    worker_status: list = field(default_factory=list)


def worker_command(url: str, study: str, root: Path, device: str | None = None,
                   threads: int | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "wavexport", "sweep", "worker", "--storage", url, "--study", study,
           "--out", str(root)]
    if device:
        cmd += ["--device", device]
    if threads:
        cmd += ["--threads", str(threads)]
    return cmd


def run_local(url: str, study: str, root, jobs: int = 1, device: str | None = None,
              threads: int | None = None) -> LocalRun:
    """Work on the sweep with ``jobs`` workers here until it is done: one in this process, or ``jobs`` worker
    processes (``wavexport sweep worker``, the command other machines run) that share the storage. A Ctrl-C or
    SIGTERM is passed to each worker once: their trials checkpoint and go back to the queue."""
    root = Path(root)
    if jobs <= 1:
        stats = Worker(url, study, str(root), device, threads).run()
        return LocalRun(stats.interrupted, [INTERRUPTED_RC if stats.interrupted else 0])
    procs = [subprocess.Popen(worker_command(url, study, root, device, threads), preexec_fn=os.setpgrp,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}) for _ in range(jobs)]
    codes, signum = wait_passing_interrupts(procs)
    return LocalRun(bool(signum) or any(c == INTERRUPTED_RC for c in codes), codes)


def sweep_state(url: str, study: str | None = None) -> dict:
    """How far the sweep is: trial counts by state, and whether it is done (nothing queued or running)."""
    st, spec = load_sweep(url, study)
    counts: dict[str, int] = {}
    for t in st.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    retried = {h for t in st.get_trials(deepcopy=False) for h in (t.system_attrs.get("retry_history") or [])}
    failed = [t.number for t in st.get_trials(deepcopy=False) if t.state.name == "FAIL" and t.number not in retried]
    return {"counts": counts, "done": not counts.get("RUNNING") and not counts.get("WAITING"), "failed": failed,
            "study": st, "spec": spec}
