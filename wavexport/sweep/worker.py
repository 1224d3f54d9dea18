"""A sweep worker: takes queued trials one at a time and runs each as an ordinary ``wavexport train`` process on
its own run directory under the sweep folder, until the queue is empty and no trial runs anywhere.

- A trial's run directory is named once (``trials/NNN-PARAMS``, recorded on the trial) and kept by its retries, so
  a trial that is run again resumes its run (``train --resume``) instead of starting over.
- While a trial trains, the worker records Optuna heartbeats. A worker killed in any way stops them (and its
  ``train`` child, which the kernel signals when its parent dies, checkpoints and exits); another worker then fails
  the trial and queues it again (:mod:`.study`). A worker that has nothing to take waits while trials run, to
  pick up those of a worker that dies.
- Ctrl-C (or SIGTERM) reaches the trial's ``train`` once: it checkpoints and exits, the trial is queued again, and
  the worker exits with status 130. Running the sweep again continues it.
- The trial's evaluations (metrics.jsonl) are reported to Optuna as they come, for pruning (:func:`.study.pruner_for`).
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import run_complete
from ..config import train_command
from ..core.procs import INTERRUPTED_CODES
from .spec import TRIALS_DIR, SweepError, fmt_params, slug, train_argv
from .study import import_optuna, load_sweep, uses_bound

POLL_S = 0.5                 # how often a running trial is looked at
LOCK_WAIT_S = 600            # how long a trial waits for a run directory another (dying) process still holds
LOG_NAME = "train.log"       # the trial's train output, in its run directory
DIVERGED_RC = 1              # train's exit status for a diverged run (DivergedError)
INTERRUPTED_RC = 130


class Interrupted(Exception):
    """The worker was asked to stop (SIGINT/SIGTERM): its trial was checkpointed and queued again."""


@dataclass
class WorkerStats:
    ran: int = 0
    failed: int = 0
    interrupted: bool = False
    lines: list = field(default_factory=list)


# --- results of a run directory ----------------------------------------------------------------------------------
def read_log(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written: the next look reads it whole
            break
    return out


def trial_result(run: Path, objective: str, diverged: bool = False) -> dict:
    """The objective's value for the run in ``run`` and what explains it: ``value``, ``steps`` (iterations done),
    ``solved_at``, ``val_loss`` / ``val_acc`` / ``test_acc`` (the best evaluation's), ``final_val_loss``, ``wall_s``,
    ``diverged``. A run that diverged has the objective's worst value (see OBJECTIVES)."""
    from ..checkpoint import Checkpoint
    from ..core.errors import CheckpointError

    run = Path(run)
    try:
        ck = Checkpoint.load(run / "checkpoint.pt")
    except CheckpointError:
        ck = None
    if ck is None and not diverged:
        raise SweepError(f"{run}: the run ended without a checkpoint.pt")
    log = read_log(run)
    best = dict(ck.best) if ck else {}
    budget = (ck.train_config.steps if ck else None) or 0
    out = {"steps": ck.progress.get("step", 0) if ck else 0, "solved_at": ck.solved_at if ck else None,
           "wall_s": round(ck.progress.get("wall_s", 0.0), 1) if ck else None, "diverged": bool(diverged)}
    for k in ("val_loss", "val_acc", "test_acc", "test_loss"):
        if isinstance(best.get(k), (int, float)):
            out[k] = float(best[k])
    finals = [r.get("val_loss") for r in log if "val_loss" in r]
    final = finals[-1] if finals else None
    out["final_val_loss"] = float(final) if isinstance(final, (int, float)) else None
    if objective == "steps_to_solve":
        if out["solved_at"] is not None:
            value = float(out["solved_at"])
        elif diverged or ck is None:
            value = 2.0 * budget
        else:
            mse = out.get("val_loss", 1.0)
            value = budget * (1.0 + min(mse if math.isfinite(mse) else 1.0, 1.0))
    elif objective == "final_val_loss":
        f = out["final_val_loss"]
        value = math.inf if diverged or f is None or not math.isfinite(f) else f
    else:
        value = out.get("val_acc", 0.0)
    out["value"] = float(value)
    return out


# --- the child process -------------------------------------------------------------------------------------------
def _find_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: a killed worker's train child runs on to its next checkpoint
        return None


_PRCTL = _find_prctl()
PR_SET_PDEATHSIG = 1


def _child_setup(parent: int):
    """What the train child runs between fork and exec: its own process group (a terminal's Ctrl-C reaches the
    worker, which passes it on once), and SIGINT from the kernel should the worker die (Linux: PR_SET_PDEATHSIG),
    so it checkpoints and exits; a worker that died before that was set leaves a child that exits at once. SIGHUP
    is ignored: a worker dying while its child is stopped orphans the child's process group, and the kernel then
    sends it SIGHUP (whose default action would end it before it checkpoints) and SIGCONT (which lets it act on the
    SIGINT)."""

    def setup() -> None:  # pragma: no cover - runs in the child
        os.setpgid(0, 0)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGINT), 0, 0, 0)
            if os.getppid() != parent:
                os._exit(INTERRUPTED_RC)
    return setup


def _lock_free(run: Path) -> bool:
    from ..core.errors import TrainingError
    from ..training.trainer import RunLock

    lock = RunLock(run)
    try:
        lock.acquire()
    except TrainingError:
        return False
    lock.release()
    return True


class Worker:
    """One worker process's loop over a sweep's queue. ``root``: the sweep folder where the trials' run directories
    go (default: the spec's). ``device`` / ``threads`` override the spec's for this worker's trials."""

    def __init__(self, storage_url: str, study_name: str | None = None, root: str | None = None,
                 device: str | None = None, threads: int | None = None, out=None, poll: float = POLL_S):
        self.optuna = import_optuna()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.study, self.spec = load_sweep(storage_url, study_name, heartbeat=True, salt=os.getpid())
        self.storage = self.study._storage  # Optuna's own handle (heartbeats, state changes): public methods only
        self.root = Path(root or self.spec.root)
        self.device = device
        self.threads = threads or self.spec.threads
        self.out = out or sys.stdout
        self.poll = poll
        self._signals = 0
        self._child: subprocess.Popen | None = None

    def say(self, text: str) -> None:
        print(f"[{self.name}] {text}", file=self.out, flush=True)

    # --- signals -------------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self._signals += 1
        child = self._child
        if child is not None and child.poll() is None and self._signals == 1:
            try:
                child.send_signal(signal.SIGINT)  # train: finish the step, checkpoint, exit 130
            except OSError:
                pass

    @property
    def stopping(self) -> bool:
        return self._signals > 0

    # --- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> WorkerStats:
        stats = WorkerStats()
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            while not self.stopping:
                self.optuna.storages.fail_stale_trials(self.study)  # dead workers' trials: failed, queued again
                trial_id = self._take()
                if trial_id is not None:
                    stats.ran += 1
                    try:
                        ok = self._run_trial(trial_id)
                    except (Interrupted, KeyboardInterrupt):
                        raise
                    except BaseException:  # the worker is failing: hand the trial back before it goes
                        self._requeue(trial_id, "worker error")
                        raise
                    if not ok:
                        stats.failed += 1
                    continue
                if not self._active():
                    break
                time.sleep(self.poll * 2)  # others' trials run: stay, to take one over should its worker die
        except Interrupted:
            pass
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
        stats.interrupted = self.stopping
        return stats

    def _states(self):
        TrialState = self.optuna.trial.TrialState
        return [t.state for t in self.study.get_trials(deepcopy=False)], TrialState

    def _active(self) -> bool:
        states, TrialState = self._states()
        return any(s in (TrialState.RUNNING, TrialState.WAITING) for s in states)

    def _take(self) -> int | None:
        """Move one queued trial to RUNNING, for this worker alone (the database decides), heartbeat first so a
        worker dying right after is noticed."""
        TrialState = self.optuna.trial.TrialState
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            tid = t._trial_id  # Optuna keeps the id there; its own callbacks read it too
            try:
                self.storage.record_heartbeat(tid)
                if self.storage.set_trial_state_values(tid, state=TrialState.RUNNING):
                    return tid
            except self.optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    # --- one trial -----------------------------------------------------------------------------------------------
    def _suggest(self, trial) -> dict:
        spec = self.spec
        params = {}
        for name, values in spec.grid.items():
            params[name] = trial.suggest_categorical(name, values)
        for name, r in spec.range_specs.items():
            if r.kind == "int":
                params[name] = trial.suggest_int(name, int(r.low), int(r.high), log=r.log)
            else:
                params[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
        return params

    def _command(self, params: dict, run: Path) -> list[str]:
        argv = train_argv(self.spec.task, self.spec.arch, self.spec.preset, self.spec.train_options(params))
        return train_command(argv, run, self.threads, self.device or None)

    def _run_trial(self, trial_id: int) -> bool:
        """Run (or resume) one trial and tell Optuna its outcome; False when it failed."""
        optuna, spec = self.optuna, self.spec
        TrialState = optuna.trial.TrialState
        trial = optuna.Trial(self.study, trial_id)
        params = self._suggest(trial)
        frozen = self.storage.get_trial(trial_id)
        retried = frozen.system_attrs.get("failed_trial")
        rel = frozen.user_attrs.get("run_dir") or f"{TRIALS_DIR}/{trial.number:03d}-{slug(params)}"
        run = self.root / rel
        trial.set_user_attr("run_dir", rel)
        trial.set_user_attr("worker", self.name)
        label = f"trial {trial.number} ({fmt_params(params)})"
        if retried is not None:
            label += f", again for trial {retried}"
        try:
            run.mkdir(parents=True, exist_ok=True)
            if not (run / "checkpoint.pt").is_file():  # a start killed before its first checkpoint: start clean
                for stale in ("metrics.jsonl", "best.pt"):
                    (run / stale).unlink(missing_ok=True)
        except OSError as e:
            raise SweepError(f"cannot write the run directory {run}: {e.strerror or e}") from None
        t0 = time.time()
        pruned = False
        if run_complete(run):  # its own budget: a trial's options never change between its tries
            rc = 0
            self.say(f"{label}: already complete in {rel}")
        else:
            self._wait_for_lock(trial_id, run)
            cmd = self._command(params, run)
            self.say(f"{label}: {'resuming' if '--resume' in cmd else 'starting'} in {rel}")
            rc, pruned = self._train(trial, trial_id, cmd, run)
        if not pruned and (rc in INTERRUPTED_CODES or (self.stopping and rc not in (0, DIVERGED_RC))):
            self._requeue(trial_id, "interrupted")
            self.say(f"{label}: interrupted; checkpoint kept, queued again")
            raise Interrupted
        try:
            if pruned:
                steps = self._set_result_attrs(trial, run, None).get("steps", "?")
                self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                why = "it cannot beat the best trial" if uses_bound(spec) else "below the median of the trials"
                self.say(f"{label}: pruned at step {steps} ({why}); its run resumes with train --resume")
                return True
            if rc in (0, DIVERGED_RC):
                res = trial_result(run, spec.objective, diverged=rc == DIVERGED_RC)
                self._set_result_attrs(trial, run, res)
                self.study.tell(trial, res["value"], skip_if_finished=True)
                what = "diverged, " if rc == DIVERGED_RC else ""
                self.say(f"{label}: {what}{spec.objective} {res['value']:g} ({time.time() - t0:.0f}s)")
                return True
            error = _tail(run / LOG_NAME)
            trial.set_user_attr("error", f"train exited with status {rc}: {error}")
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            self.say(f"{label}: FAILED (train exited with status {rc}: {error}); see {run / LOG_NAME}")
            return False
        except SweepError as e:
            trial.set_user_attr("error", str(e))
            self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            self.say(f"{label}: FAILED ({e})")
            return False

    def _set_result_attrs(self, trial, run: Path, res: dict | None) -> dict:
        """Record what explains the trial's value on it (steps, solved_at, metrics, wall time); returns it."""
        if res is None:  # pruned: what the run reached, without a value
            try:
                res = trial_result(run, self.spec.objective)
            except SweepError:
                return {}
            res.pop("value", None)
        for k, v in res.items():
            if v is not None and not (isinstance(v, float) and not math.isfinite(v)):
                trial.set_user_attr(k, v)
        return res

    def _requeue(self, trial_id: int, why: str) -> None:
        """Fail the trial and queue a copy with the same parameters and run directory (what a stale heartbeat gets)."""
        optuna = self.optuna
        try:
            self.storage.set_trial_user_attr(trial_id, "ended", why)
            self.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker failed it already (and queued it again)
        frozen = self.storage.get_trial(trial_id)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(self.study, frozen)

    def _wait_for_lock(self, trial_id: int, run: Path) -> None:
        """A train process of a worker that died may still be writing its last checkpoint: wait for it to end."""
        deadline = time.time() + LOCK_WAIT_S
        said = False
        while not _lock_free(run):
            if self.stopping:
                self._requeue(trial_id, "interrupted")
                raise Interrupted
            if time.time() > deadline:
                raise SweepError(f"{run} is still in use by another training run after {LOCK_WAIT_S}s")
            if not said:
                self.say(f"{run} is in use by a train process that is ending; waiting")
                said = True
            self.storage.record_heartbeat(trial_id)
            time.sleep(1.0)

    def _train(self, trial, trial_id: int, cmd: list[str], run: Path) -> tuple[int, bool]:
        """Run ``cmd``, heartbeats and intermediate values as it goes; (exit status, pruned)."""
        spec = self.spec
        bound = uses_bound(spec)
        key = "val_" + ("acc" if spec.objective == "best_val_acc" else "loss")
        reported: set[int] = set()
        pruned = False
        last_beat = 0.0
        with open(run / LOG_NAME, "a") as log:
            log.write("$ " + " ".join(cmd[1:]) + "\n")
            log.flush()
            self._child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           preexec_fn=_child_setup(os.getpid()),
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                while True:
                    try:
                        rc = self._child.wait(timeout=self.poll)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.time()
                    if now - last_beat >= spec.heartbeat / 2:
                        self.storage.record_heartbeat(trial_id)
                        last_beat = now
                    if pruned or self.stopping:
                        continue
                    new = False
                    for rec in read_log(run):
                        step = rec.get("step")
                        if not isinstance(step, int) or step in reported:
                            continue
                        reported.add(step)
                        if rec.get("solved"):
                            continue  # the run ends here, solved: nothing to prune
                        value = float(step) if bound else rec.get(key)
                        if not isinstance(value, (int, float)) or not math.isfinite(value):
                            continue
                        trial.report(value, step)
                        new = True
                    if new and trial.should_prune():
                        pruned = True
                        self._child.send_signal(signal.SIGINT)  # checkpoint and exit: resumable by hand
            finally:
                child, self._child = self._child, None
                if child.poll() is None:  # the worker itself is failing: leave no train process behind
                    child.send_signal(signal.SIGINT)
                    try:
                        child.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        child.kill()
        return rc, pruned and rc in INTERRUPTED_CODES  # a run that ended on its own meanwhile counts as finished


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if ln.startswith("error:")]
    return " | ".join((errs or lines)[-n:])[:300] if lines else "(empty log)"


def run_worker(storage_url: str, study_name: str | None = None, root: str | None = None, device: str | None = None,
               threads: int | None = None) -> WorkerStats:
    """Work on a sweep until it is done (or a Ctrl-C)."""
    return Worker(storage_url, study_name, root, device, threads).run()


__all__ = ["Interrupted", "Worker", "WorkerStats", "read_log", "run_worker", "trial_result"]
