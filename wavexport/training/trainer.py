"""The training loop: epochs over files for the image tasks, fresh batches for the synthetic ones.

Everything that decides the next batch and update (weights, Adam, schedule, the data generator, the position within
the epoch) is in ``checkpoint.pt``, so an interrupted run resumes to the same weights as an uninterrupted one.

A run holds an exclusive lock on its directory (:class:`RunLock`) for as long as it lives, checks every loss and
gradient for NaN/inf (a diverged run stops with :class:`DivergedError` and keeps its last finite checkpoint), and
writes every file atomically (a full or read-only disk is a one-line :class:`FileWriteError`; the previous
checkpoint stays).

Under ``torchrun`` (an initialized process group) the trainer is data-parallel (:mod:`.distributed`): each rank
trains on its slice of the same global batch through DistributedDataParallel, and rank 0 alone holds the lock,
evaluates and writes the run directory. The checkpoint does not depend on the number of processes.
"""
from __future__ import annotations

import collections
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import SNAPSHOTS, Checkpoint, drop_snapshots_after, snapshot_path
from ..config import TrainConfig, build_run, resolve_device, resume_config
from ..core.errors import CheckpointError, DivergedError, FileWriteError, TrainingError
from ..core.io import append_line, atomic_write
from ..evaluation import evaluate, load_eval_splits, model_predictor, test_stream
from ..tasks import Split, resolve_data_dir
from . import distributed

LOCK_NAME = ".lock"             # in the run directory; flock()ed by the run that trains there
TEMP_PATTERNS = (".checkpoint.pt.*.tmp", ".best.pt.*.tmp", ".metrics.jsonl.*.tmp",  # atomic_write's temp files
                 f"{SNAPSHOTS}/.step-*.pt.*.tmp")
EMA_BETA = 0.95                 # the progress bar's loss: an exponential moving average over ~20 steps
MAX_SKIPPED_IN_A_ROW = 20       # skip_nonfinite: this many non-finite batches in a row stop the run anyway


class RunLock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``, held for the life of a run. The kernel drops it when the process
    ends in any way (kill -9 included), so a lock is never stale; the file itself stays and names the last holder."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        if self._file is not None:
            return
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no locking
            return
        try:
            f = open(self.path, "a+")
        except OSError as e:
            raise FileWriteError(f"cannot write {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not written its id yet"
            f.close()
            raise TrainingError(f"{self.directory} is in use by another training run ({holder}); wait for it "
                                "to end, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def check_milestones(milestones) -> None:
    """LR milestones must be positive and strictly increasing (MultiStepLR would take 5,3 and mean nothing)."""
    ms = list(milestones or [])
    if any(int(m) < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
        raise TrainingError(f"--lr-milestones must be strictly increasing positive integers, got "
                            f"{','.join(map(str, ms))}")


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


# --- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir, resume: bool = False, quiet: bool = False, on_step=None,
                 resume_overrides: dict | None = None, skip_nonfinite: bool = False):
        """``resume``: continue the run in ``out_dir`` with its saved config; ``resume_overrides`` (the options
        given explicitly) may extend the budget or move the device, and must agree with the saved run otherwise.
        ``skip_nonfinite``: a batch whose loss or gradient is NaN/inf is skipped (no update) instead of stopping
        the run (which still stops after MAX_SKIPPED_IN_A_ROW such batches in a row)."""
        self.out = Path(out_dir)
        self.quiet = quiet
        self.on_step = on_step  # test hook: called with the trainer after every optimizer step
        self.skip_nonfinite = skip_nonfinite
        self._stop = False             # asked for here (Ctrl-C, request_stop)
        self._stop_agreed = False      # distributed: asked for on some rank, as the last all-reduce told every rank
        self._skipped_in_a_row = 0
        self.world = distributed.current()
        self.lock = RunLock(self.out)
        created: list[Path] = []

        def claim():  # rank 0 alone: the directory, its lock and the saved run
            ckpt_path = self.out / "checkpoint.pt"
            if resume and not ckpt_path.exists():
                raise TrainingError(f"--resume: no checkpoint.pt in {self.out}")
            if not resume:
                check_milestones(cfg.lr_milestones)
            created.extend(d for d in (self.out, *self.out.parents) if not d.exists())  # leaf first
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise FileWriteError(f"cannot create the run directory {self.out}: {e.strerror or e}") from None
            # The lock comes before anything looks at the directory: two runs started at once cannot both find it
            # empty.
            self.lock.acquire()
            return self._load_resumed(resume)

        try:
            resumed = distributed.on_main(claim, self.world)
            self._init(cfg, resumed, resume_overrides)
        except BaseException:
            if created:  # a run that could not start leaves no directory behind
                try:
                    self.lock.path.unlink()
                except OSError:
                    pass
                for d in created:
                    try:
                        d.rmdir()
                    except OSError:
                        break
            self.lock.release()
            raise

    def _load_resumed(self, resume: bool) -> Checkpoint | None:
        """With the lock held: clear what a killed run left half-written, and read the run to resume (or check that
        there is none)."""
        ckpt_path = self.out / "checkpoint.pt"
        for pattern in TEMP_PATTERNS:  # left by a run that was killed while writing: nobody else writes here now
            for orphan in self.out.glob(pattern):
                try:
                    orphan.unlink()
                except OSError:
                    pass
        if resume:
            resumed = Checkpoint.load(ckpt_path)
            if not resumed.resumable:
                raise CheckpointError(f"{ckpt_path}: holds no optimizer state, cannot resume from it")
            return resumed
        if ckpt_path.exists():
            raise TrainingError(f"{self.out} already holds a run (checkpoint.pt); pass --resume to continue it, "
                                "or choose another --out")
        drop_snapshots_after(self.out, -1)  # an attempt that died before its first checkpoint: not this run's
        return None

    def _init(self, cfg: TrainConfig, resumed: Checkpoint | None, resume_overrides: dict | None) -> None:
        if resumed:
            cfg = self._merge_resume(cfg, resumed.train_config, resume_overrides or {})
        self.cfg = cfg
        self.device = distributed.device_for(resolve_device(cfg.device), self.world)
        torch.manual_seed(cfg.seed)
        run = build_run(cfg, resumed.task["args"] if resumed else None)
        self.task, self.model_config, self.model = run.task, run.model_config, run.model.to(self.device)
        self.is_dataset = self.task.kind == "dataset"
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, cfg.lr_milestones, cfg.lr_gamma)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        # run_loss/seen: the running training loss, kept so a resumed run logs exactly what an uninterrupted one does
        # ema_loss/ema_n: the progress bar's loss (display only: it never decides anything)
        self.progress = {"step": 0, "epoch": 0, "batch": 0, "epoch_rng": None, "log_lines": 0,
                         "run_loss": 0.0, "seen": 0, "wall_s": 0.0, "cpu_s": 0.0, "ema_loss": 0.0, "ema_n": 0}
        self._clock = (time.time(), time.process_time())
        self.best: dict = {}
        self.solved_at: int | None = None
        self.last_eval: dict = {}
        self.splits: dict[str, Split] = {}
        self.saved_step: int | None = None  # the step of the last checkpoint.pt written (or resumed from)
        if self.is_dataset:
            # Record where the data was found, so eval and export of this run find it without --data-dir.
            cfg.data_dir = str(resolve_data_dir(cfg.data_dir).resolve())
            self.splits = load_eval_splits(self.task, cfg.data_dir, cfg.seed, cfg.eval_limit)
            if cfg.limit:
                tr = self.splits["train"]
                self.splits["train"] = Split(tr.x[:cfg.limit], tr.y[:cfg.limit])
            self.splits = {k: Split(v.x.to(self.device), v.y.to(self.device)) for k, v in self.splits.items()}
        if not resumed and cfg.snapshot_every:
            self._check_snapshots(0)
        if resumed:
            self._check_budget(resumed)  # these checks come before _restore touches the run directory
            # a --snapshot-every given now (not the saved one: a run stopped past its last snapshot resumes as is)
            given = (resume_overrides or {}).get("snapshot_every")
            if given and given != resumed.train_config.snapshot_every:
                self._check_snapshots(int(resumed.progress.get("step", 0)))
            moved = self._moved_milestones(resumed)
            self._restore(resumed)
            if moved is not None:
                self.sched.milestones = collections.Counter(moved)
        self.ddp = self.model  # what a training step calls: the model, or its DDP wrapper in a distributed run
        if self.world.active:
            # DDP broadcasts rank 0's weights at construction; all ranks built or resumed the same ones anyway.
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # --- config / checkpoint -------------------------------------------------------------------------------------
    @staticmethod
    def _merge_resume(cli: TrainConfig, saved: TrainConfig, overrides: dict) -> TrainConfig:
        if cli.task != saved.task:
            raise TrainingError(f"--resume: the run in this directory is {saved.task}/{saved.arch}, not {cli.task}")
        return resume_config(saved, overrides)

    def checkpoint(self, full: bool = True) -> Checkpoint:
        """The run as it is now; ``full`` adds what resuming needs (optimizer, schedule, RNG states)."""
        ck = Checkpoint.of(self.model, self.model_config, self.task, self.cfg, progress=dict(self.progress),
                           best=dict(self.best), solved_at=self.solved_at, metrics=self.summary_metrics())
        if full:
            ck.optimizer = self.opt.state_dict()
            ck.scheduler = self.sched.state_dict()
            ck.rng = {"data": self.gen.get_state(), "torch": torch.get_rng_state()}
        return ck

    def _restore(self, ck: Checkpoint) -> None:
        try:
            self.model.load_state_dict(ck.model)
            self.opt.load_state_dict(ck.optimizer)
            self.sched.load_state_dict(ck.scheduler)
            self.gen.set_state(ck.rng["data"])
            torch.set_rng_state(ck.rng["torch"])
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{ck.path}: cannot resume from it ({e})") from None
        self.progress = {"wall_s": 0.0, "cpu_s": 0.0, "ema_loss": 0.0, "ema_n": 0, **ck.progress}
        self.saved_step = self.progress["step"]
        self.best = dict(ck.best or {})
        self.solved_at = ck.solved_at
        # Drop log lines (and snapshots) written after this checkpoint, so the resumed run does not log them twice.
        log = self.out / "metrics.jsonl"
        if self.world.is_main:
            drop_snapshots_after(self.out, self.saved_step)
        if self.world.is_main and log.exists():
            lines = log.read_text().splitlines(keepends=True)[: self.progress["log_lines"]]
            atomic_write(log, lambda tmp: Path(tmp).write_text("".join(lines)))

    def _check_budget(self, ck: Checkpoint) -> None:
        """A resumed run's budget may grow or shrink, but not to before the step it is at: that would end the run
        without a step and write its checkpoint with a budget its own history has passed."""
        done, total = int(ck.progress.get("step", 0)), self.total_steps()
        if total < done:
            unit = "--epochs/--steps" if self.is_dataset else "--steps"
            raise TrainingError(f"--resume: the run is at step {done}, past the budget asked for (step {total}); "
                                f"give a larger {unit}, or leave it out")

    def _check_snapshots(self, done: int) -> None:
        """A --snapshot-every that would keep no snapshot before the budget ends is a mistake, not a quiet no-op (a run
        with no step left to train keeps none anyway)."""
        every, total = self.cfg.snapshot_every, self.total_steps()
        first = (done // every + 1) * every
        if done < total < first:
            raise TrainingError(f"--snapshot-every {every} keeps no snapshot: its next one would be at step {first}, "
                                f"past the run's last step ({total}); give at most {total - done}")

    def _moved_milestones(self, ck: Checkpoint) -> list[int] | None:
        """The LR milestones a resumed run moves to, or None if they stay: a run may move the drops it has not
        reached yet (to fit a longer or shorter run than planned); those already passed must stay as they were, so
        the run's history stays one schedule."""
        saved, new = list(ck.train_config.lr_milestones or []), list(self.cfg.lr_milestones or [])
        if new == saved:
            return None
        check_milestones(new)
        try:
            done = int(ck.scheduler["last_epoch"])  # epochs (image tasks) or steps the schedule has counted
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{ck.path}: cannot resume from it ({e})") from None
        if [m for m in new if m <= done] != [m for m in saved if m <= done]:
            raise TrainingError(f"--resume: --lr-milestones may only move the drops still ahead (the run is at "
                                f"{done}, its milestones are {saved}), got {new}")
        return new

    def save(self) -> None:
        self._tick()
        self._check_weights("checkpoint.pt")  # every rank: the weights are the same, so is the verdict
        if self.world.is_main:
            self.checkpoint().save(self.out / "checkpoint.pt")
        self.saved_step = self.progress["step"]

    def _snapshot(self) -> None:
        """Every ``snapshot_every`` steps: the weights as they are (``snapshots/step-NNNNNNN.pt``, a weights-only
        checkpoint), the points ``wavexport average`` averages (stochastic weight averaging, after the fact)."""
        every, step = self.cfg.snapshot_every, self.progress["step"]
        if not every or step % every:
            return
        self._check_weights(f"snapshot {step}")
        if self.world.is_main:
            self._tick()
            # the weights and where they are, no metrics: a snapshot is not evaluated (the run's best is not its own)
            Checkpoint.of(self.model, self.model_config, self.task, self.cfg, progress=dict(self.progress)).save(
                snapshot_path(self.out, step))

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    def _check_weights(self, what: str) -> None:
        """Never write a NaN/inf model: a finite loss can still be followed by non-finite weights."""
        if not self._weights_finite():
            raise self._diverged(f"the weights are not finite; {what} was not written", self.progress["step"])

    def summary_metrics(self) -> dict:
        """The metrics a checkpoint reports: those of the best evaluation (highest validation accuracy for image
        tasks, the paper's protocol; lowest held-out loss for synthetic ones), with the test metrics taken then."""
        m = dict(self.best)
        if getattr(self.task, "solved_threshold", None) is not None:
            m["solved_at"] = self.solved_at
        if self.cfg.eval_limit and self.is_dataset:
            m["eval_limit"] = self.cfg.eval_limit
        return m

    def _tick(self) -> None:
        """Add the wall and CPU time since the last tick to the run's totals (kept across resumes)."""
        now = (time.time(), time.process_time())
        self.progress["wall_s"] = self.progress.get("wall_s", 0.0) + now[0] - self._clock[0]
        self.progress["cpu_s"] = self.progress.get("cpu_s", 0.0) + now[1] - self._clock[1]
        self._clock = now

    def _log(self, record: dict) -> None:
        self._tick()
        record = {**record, "wall_s": round(self.progress["wall_s"], 3), "cpu_s": round(self.progress["cpu_s"], 3)}
        # no bare NaN/Infinity (not JSON): a non-finite number is logged as null
        line = json.dumps({k: _finite_or_none(v) for k, v in record.items()}, allow_nan=False)
        if self.world.is_main:
            append_line(self.out / "metrics.jsonl", line)
        self.progress["log_lines"] += 1

    # --- training ------------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current update, checkpoint and return (what Ctrl-C does)."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        """A stop was asked for: here, or (distributed) on any rank as of the last step, so all ranks agree."""
        return self._stop_agreed if self.world.active else self._stop

    def _diverged(self, what: str, step: int | None = None) -> DivergedError:
        """``step``: where it was seen (default: the step being taken)."""
        step = self.progress["step"] + 1 if step is None else step
        if self.saved_step is not None:
            kept = f"checkpoint.pt of step {self.saved_step} is kept (the last finite one)"
        else:
            kept = "no checkpoint was written before it"
        return DivergedError(f"step {step}: {what}: training diverged and was stopped; {kept} "
                             f"in {self.out}; start again with a lower --lr, or pass "
                             "--skip-nonfinite to skip such batches")

    def _nonfinite(self, what: str) -> None:
        """A non-finite loss or gradient: skip the batch (``skip_nonfinite``) or stop the run."""
        self.opt.zero_grad(set_to_none=True)
        if not self.skip_nonfinite or self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            if self._skipped_in_a_row:
                what += f" ({self._skipped_in_a_row} such batches in a row)"
            raise self._diverged(what)
        self._skipped_in_a_row += 1
        self.progress["skipped_nonfinite"] = self.progress.get("skipped_nonfinite", 0) + 1
        if not self.quiet and self.world.is_main:
            tqdm.write(f"step {self.progress['step'] + 1}: {what}; batch skipped", file=sys.stderr)

    def _shard(self, xs, y):
        """Distributed: this rank's slice of the global batch (every rank drew the same one), and the weight of its
        mean loss (:func:`distributed.loss_weight`). One process: the batch itself, weight 1."""
        if not self.world.active:
            return xs, y, 1.0
        n = len(y)
        part = distributed.shard(n, self.world)
        return xs[part], y[part], distributed.loss_weight(part.stop - part.start, n, self.world)

    def _train_step(self, xs, y, weight: float = 1.0) -> float | None:
        """One update; returns the batch's loss, or None when the batch was skipped (non-finite, skip_nonfinite).
        Distributed: ``xs``, ``y`` are this rank's shard, ``weight`` its share (the returned loss is the global
        batch's mean on every rank, and the ranks agree here on whether to stop after this step)."""
        self.ddp.train()
        ys, _ = self.ddp(xs, last_only=self.task.last_only)
        if not self.world.active:
            loss = self.task.loss(ys, y)
            value = loss.item()
        else:
            # an empty shard (a last batch smaller than the world) still takes part in DDP's gradient all-reduce
            loss = self.task.loss(ys, y) * weight if len(y) else ys.sum() * 0.0
            total, stops = distributed.all_reduce_sum([loss.item(), float(self._stop)], self.device)
            value = total / self.world.size
            self._stop_agreed = stops > 0
        self.opt.zero_grad(set_to_none=True)
        if not math.isfinite(value):
            self._nonfinite(f"the training loss is {value}")
            self.progress["step"] += 1
            return None
        loss.backward()
        # The gradient norm is taken in any case (max_norm inf scales by exactly 1.0: no clipping), to see NaN/inf.
        clip = self.cfg.grad_clip if self.cfg.grad_clip and self.cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if not bool(torch.isfinite(norm)):
            self._nonfinite(f"the gradient norm is {float(norm)}")
            self.progress["step"] += 1
            return None
        self._skipped_in_a_row = 0
        self.opt.step()
        self.progress["step"] += 1
        if self.on_step is not None:
            self.on_step(self)
        return value

    def _track(self, loss: float) -> None:
        """The progress bar's loss: a bias-corrected exponential moving average, so one spike fades in ~20 steps
        (the epoch mean that metrics.jsonl records would carry it to the end of the epoch)."""
        p = self.progress
        p["ema_n"] = p.get("ema_n", 0) + 1
        p["ema_loss"] = EMA_BETA * p.get("ema_loss", 0.0) + (1 - EMA_BETA) * loss

    @property
    def display_loss(self) -> float:
        p = self.progress
        n = p.get("ema_n", 0)
        return p.get("ema_loss", 0.0) / (1 - EMA_BETA ** n) if n else float("nan")

    def total_steps(self) -> int:
        cfg = self.cfg
        if self.is_dataset:
            if cfg.epochs is None and cfg.steps:
                return cfg.steps
            per_epoch = math.ceil(len(self.splits["train"]) / cfg.batch_size)
            total = per_epoch * (cfg.epochs or 1)
            return min(total, cfg.steps) if cfg.steps else total
        if not cfg.steps:
            raise TrainingError(f"{cfg.task}: set a budget with --steps")
        return cfg.steps

    def run(self) -> dict:
        """Train to the end of the budget (or a Ctrl-C, or a solved task), checkpoint, and release the run's lock."""
        if self.world.is_main:
            self.lock.acquire()  # held since __init__; taken again if this trainer runs a second time
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> dict:
        total = self.total_steps()  # may refuse the config: before the signal handler is installed
        # SIGTERM too: what a scheduler or a cluster's preemption sends, with a grace period to save in.
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.stop_signal = None
        seen: set[int] = set()

        def on_signal(signum, frame):
            # The same signal twice (Ctrl-C, Ctrl-C) stops now. One of each is one request: a preempted job's
            # launcher (sweep worker, train --nproc) passes the SIGTERM it got on as SIGINT to a child that got
            # the SIGTERM too.
            if signum in seen:
                raise KeyboardInterrupt
            seen.add(signum)
            if self._stop:
                return
            self._stop = True
            self.stop_signal = signum
            if self.world.is_main:
                what, again = ("interrupt", "Ctrl-C") if signum == signal.SIGINT else (signal.Signals(signum).name,) * 2
                tqdm.write(f"{what}: finishing this step and saving a checkpoint ({again} again to abort)",
                           file=sys.stderr)

        try:
            for sig in previous:
                signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: leave signals alone
            previous = {}
        t0 = time.time()
        self._clock = (t0, time.process_time())  # time spent loading data or waiting is not the run's
        self.bar = tqdm(total=total, initial=min(self.progress["step"], total),
                        disable=self.quiet or not self.world.is_main,
                        unit="it", dynamic_ncols=True, desc=f"{self.cfg.task}/{self.cfg.arch}")
        try:
            if self.is_dataset:
                self._run_epochs(total)
            else:
                self._run_synthetic(total)
            self.save()
        finally:
            self.bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return {"interrupted": self.stopping and self.progress["step"] < total, "step": self.progress["step"],
                "signal": self.stop_signal,
                "total_steps": total, "seconds": time.time() - t0, "metrics": self.summary_metrics(),
                "out": str(self.out)}

    def _postfix(self, extra: dict) -> None:
        self.bar.set_postfix(loss=f"{self.display_loss:.4f}", **{k: (f"{v:.4f}" if isinstance(v, float) else v)
                                                     for k, v in extra.items()}, refresh=False)

    def _run_epochs(self, total: int) -> None:
        cfg, p, train = self.cfg, self.progress, self.splits["train"]
        n = len(train)
        n_batches = math.ceil(n / cfg.batch_size)
        while p["step"] < total and not self.stopping:
            if p["batch"] == 0:
                p["epoch_rng"] = self.gen.get_state()
                order = torch.randperm(n, generator=self.gen)
            else:  # resuming inside an epoch: rebuild its order, then continue the generator where it was
                now = self.gen.get_state()
                self.gen.set_state(p["epoch_rng"])
                order = torch.randperm(n, generator=self.gen)
                self.gen.set_state(now)
            if p["batch"] == 0:
                p["run_loss"], p["seen"] = 0.0, 0
            while p["batch"] < n_batches and p["step"] < total and not self.stopping:
                idx = order[p["batch"] * cfg.batch_size:(p["batch"] + 1) * cfg.batch_size].to(self.device)
                xs = self.task.inputs(train.x[idx], self.gen)  # the global batch (its noise drawn once), then shard
                loss = self._train_step(*self._shard(xs, train.y[idx]))
                p["batch"] += 1
                if loss is not None:
                    p["seen"] += 1
                    p["run_loss"] += (loss - p["run_loss"]) / p["seen"]
                    self._track(loss)
                self.bar.update(1)
                self._postfix({"epoch": p["epoch"] + 1, **self._last_short()})
                self._snapshot()
                if p["step"] % cfg.checkpoint_every == 0:
                    self.save()
            if p["batch"] >= n_batches:
                p["batch"] = 0
                p["epoch"] += 1
                self.sched.step()
                self._evaluate(p["run_loss"])
                self.save()
            elif p["step"] >= total:  # budget ends inside an epoch: evaluate what we have
                self._evaluate(p["run_loss"])

    def _last_short(self) -> dict:
        return {k: v for k, v in self.last_eval.items() if k in ("val_acc",)}

    def _run_synthetic(self, total: int) -> None:
        cfg, p = self.cfg, self.progress
        while p["step"] < total and not self.stopping and not self.stopped_solved:
            xs, y, weight = self._shard(*self.task.sample(cfg.batch_size, self.gen))
            loss = self._train_step(xs.to(self.device), y.to(self.device), weight)
            self.sched.step()
            if loss is not None:
                p["seen"] += 1
                p["run_loss"] += (loss - p["run_loss"]) / min(p["seen"], 50)  # running mean over ~the last 50 steps
                self._track(loss)
            self.bar.update(1)
            self._postfix({k: v for k, v in self.last_eval.items() if k in ("val_loss", "val_acc")})
            self._snapshot()
            if p["step"] % cfg.eval_every == 0 or p["step"] == total:
                self._evaluate(p["run_loss"])
                self.save()
            elif p["step"] % cfg.checkpoint_every == 0:
                self.save()

    @property
    def stopped_solved(self) -> bool:
        """The run asked to end once solved (``stop_when_solved``) and is: it counts as complete."""
        return bool(self.cfg.stop_when_solved and self.solved_at is not None)

    def _score(self, split: str) -> dict:
        """Task metrics on the held-out ``split`` (test_stream: the same data eval and the exports use)."""
        stream = test_stream(self.task, self.cfg.seed, split, n=None if self.is_dataset else self.cfg.eval_batch,
                             splits=self.splits or None)
        total = len(self.splits[split]) if self.is_dataset else self.cfg.eval_batch
        with tqdm(total=total, desc=f"eval {split}", unit="seq", leave=False,
                  disable=self.quiet or not self.is_dataset) as bar:
            metrics = evaluate(model_predictor(self.model, self.task, self.device), self.task, stream, bar.update)
        metrics.pop("n")
        return metrics

    def _evaluate(self, train_loss: float) -> None:
        """Score the validation split; on a new best (by the task's primary metric) also the test split, and write
        best.pt. Image tasks log per epoch, synthetic ones every ``eval_every`` steps. Distributed: rank 0 evaluates
        and sends the outcome (best, solved, the log position) to the others, which wait."""
        if self.world.is_main:
            self._evaluate_here(train_loss)
        if self.world.active:
            self.best, self.solved_at, self.last_eval, self.progress["log_lines"] = distributed.broadcast(
                (self.best, self.solved_at, self.last_eval, self.progress["log_lines"]), self.world)

    def _evaluate_here(self, train_loss: float) -> None:
        p, task = self.progress, self.task
        val = self._score("valid")
        rec = {"epoch": p["epoch"]} if self.is_dataset else {}
        rec.update(step=p["step"], lr=self.opt.param_groups[0]["lr"], train_loss=train_loss)
        if self.is_dataset:  # what train_loss is for the image tasks, by name (synthetic: a running mean, ~50 steps)
            rec["train_loss_epoch_mean"] = train_loss
        rec.update({f"val_{k}": v for k, v in val.items()})
        threshold = getattr(task, "solved_threshold", None)
        if threshold is not None and self.solved_at is None and val["loss"] <= threshold:
            self.solved_at = p["step"]
            rec["solved"] = True
        key = "val_" + task.primary_metric
        better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
        finite = all(math.isfinite(v) for v in val.values()) and self._weights_finite()
        if not finite:
            rec["nonfinite"] = True  # logged (as null), never the best
        elif not self.best or better(rec[key], self.best[key]):
            test = {f"test_{k}": v for k, v in self._score("test").items()}
            if self.is_dataset:
                rec.update(test)
            self.best = {**({"epoch": p["epoch"]} if self.is_dataset else {}), "step": p["step"],
                         **{f"val_{k}": v for k, v in val.items()}, **test}
            self.checkpoint(full=False).save(self.out / "best.pt")
        self.last_eval = rec
        self._log(rec)
