"""The training loop: epochs over files for the image tasks, fresh batches for the synthetic ones.

Everything that decides the next batch and update (weights, Adam, schedule, the data generator, the position within
the epoch) is in ``checkpoint.pt``, so an interrupted run resumes to the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..config import TrainConfig, build_run, resolve_device
from ..core.errors import CheckpointError, TrainingError
from ..core.io import atomic_write
from ..evaluation import evaluate, load_eval_splits, model_predictor, test_stream
from ..tasks import Split, resolve_data_dir

# --- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir, resume: bool = False, quiet: bool = False, on_step=None,
                 resume_overrides: dict | None = None):
        """``resume``: continue the run in ``out_dir`` with its saved config; ``resume_overrides`` (the options
        given explicitly) may extend the budget or move the device, and must agree with the saved run otherwise."""
        self.out = Path(out_dir)
        self.quiet = quiet
        self.on_step = on_step  # test hook: called with the trainer after every optimizer step
        self._stop = False
        ckpt_path = self.out / "checkpoint.pt"
        resumed = None
        if resume:
            if not ckpt_path.exists():
                raise TrainingError(f"--resume: no checkpoint.pt in {self.out}")
            resumed = Checkpoint.load(ckpt_path)
            if not resumed.resumable:
                raise CheckpointError(f"{ckpt_path}: holds no optimizer state, cannot resume from it")
            cfg = self._merge_resume(cfg, resumed.train_config, resume_overrides or {})
        elif ckpt_path.exists():
            raise TrainingError(f"{self.out} already holds a run (checkpoint.pt); pass --resume to continue it, "
                                "or choose another --out")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        run = build_run(cfg, resumed.task["args"] if resumed else None)
        self.task, self.model_config, self.model = run.task, run.model_config, run.model.to(self.device)
        self.is_dataset = self.task.kind == "dataset"
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, cfg.lr_milestones, cfg.lr_gamma)
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        # run_loss/seen: the running training loss, kept so a resumed run logs exactly what an uninterrupted one does
        self.progress = {"step": 0, "epoch": 0, "batch": 0, "epoch_rng": None, "log_lines": 0,
                         "run_loss": 0.0, "seen": 0, "wall_s": 0.0, "cpu_s": 0.0}
        self._clock = (time.time(), time.process_time())
        self.best: dict = {}
        self.solved_at: int | None = None
        self.last_eval: dict = {}
        self.splits: dict[str, Split] = {}
        if self.is_dataset:
            # Record where the data was found, so eval and export of this run find it without --data-dir.
            cfg.data_dir = str(resolve_data_dir(cfg.data_dir).resolve())
            self.splits = load_eval_splits(self.task, cfg.data_dir, cfg.seed, cfg.eval_limit)
            if cfg.limit:
                tr = self.splits["train"]
                self.splits["train"] = Split(tr.x[:cfg.limit], tr.y[:cfg.limit])
            self.splits = {k: Split(v.x.to(self.device), v.y.to(self.device)) for k, v in self.splits.items()}
        if resumed:
            self._restore(resumed)

    # --- config / checkpoint -------------------------------------------------------------------------------------
    RESUME_MAY_CHANGE = ("epochs", "steps", "device", "data_dir", "checkpoint_every", "stop_when_solved")

    @staticmethod
    def _merge_resume(cli: TrainConfig, saved: TrainConfig, overrides: dict) -> TrainConfig:
        if cli.task != saved.task:
            raise TrainingError(f"--resume: the run in this directory is {saved.task}/{saved.arch}, not {cli.task}")
        merged = TrainConfig.from_dict(saved.to_dict())
        for k, v in overrides.items():
            if k in Trainer.RESUME_MAY_CHANGE:
                setattr(merged, k, v)
            elif hasattr(saved, k) and getattr(saved, k) != v:
                raise TrainingError(f"--resume: cannot change {k} of a saved run (it has {getattr(saved, k)!r})")
        return merged

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
        self.progress = {"wall_s": 0.0, "cpu_s": 0.0, **ck.progress}
        self.best = dict(ck.best or {})
        self.solved_at = ck.solved_at
        # Drop log lines written after this checkpoint, so the resumed run does not log them twice.
        log = self.out / "metrics.jsonl"
        if log.exists():
            lines = log.read_text().splitlines(keepends=True)[: self.progress["log_lines"]]
            atomic_write(log, lambda tmp: Path(tmp).write_text("".join(lines)))

    def save(self) -> None:
        self._tick()
        self.checkpoint().save(self.out / "checkpoint.pt")

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
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self.progress["log_lines"] += 1

    # --- training ------------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current update, checkpoint and return (what Ctrl-C does)."""
        self._stop = True

    def _train_step(self, xs, y) -> float:
        self.model.train()
        ys, _ = self.model(xs, last_only=self.task.last_only)
        loss = self.task.loss(ys, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip and self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.progress["step"] += 1
        if self.on_step is not None:
            self.on_step(self)
        return loss.item()

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
        self.out.mkdir(parents=True, exist_ok=True)
        total = self.total_steps()  # may refuse the config: before the signal handler is installed
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            if self._stop:  # second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop = True
            tqdm.write("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

        try:
            signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: leave signals alone
            previous = None
        t0 = time.time()
        self._clock = (t0, time.process_time())  # time spent loading data or waiting is not the run's
        self.bar = tqdm(total=total, initial=min(self.progress["step"], total), disable=self.quiet,
                        unit="it", dynamic_ncols=True, desc=f"{self.cfg.task}/{self.cfg.arch}")
        try:
            if self.is_dataset:
                self._run_epochs(total)
            else:
                self._run_synthetic(total)
            self.save()
        finally:
            self.bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return {"interrupted": self._stop and self.progress["step"] < total, "step": self.progress["step"],
                "total_steps": total, "seconds": time.time() - t0, "metrics": self.summary_metrics(),
                "out": str(self.out)}

    def _postfix(self, loss: float, extra: dict) -> None:
        self.bar.set_postfix(loss=f"{loss:.4f}", **{k: (f"{v:.4f}" if isinstance(v, float) else v)
                                                     for k, v in extra.items()}, refresh=False)

    def _run_epochs(self, total: int) -> None:
        cfg, p, train = self.cfg, self.progress, self.splits["train"]
        n = len(train)
        n_batches = math.ceil(n / cfg.batch_size)
        while p["step"] < total and not self._stop:
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
            while p["batch"] < n_batches and p["step"] < total and not self._stop:
                idx = order[p["batch"] * cfg.batch_size:(p["batch"] + 1) * cfg.batch_size].to(self.device)
                xs = self.task.inputs(train.x[idx], self.gen)
                loss = self._train_step(xs, train.y[idx])
                p["batch"] += 1
                p["seen"] += 1
                p["run_loss"] += (loss - p["run_loss"]) / p["seen"]
                self.bar.update(1)
                self._postfix(p["run_loss"], {"epoch": p["epoch"] + 1, **self._last_short()})
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
        while p["step"] < total and not self._stop and not self.stopped_solved:
            xs, y = self.task.sample(cfg.batch_size, self.gen)
            loss = self._train_step(xs.to(self.device), y.to(self.device))
            self.sched.step()
            p["seen"] += 1
            p["run_loss"] += (loss - p["run_loss"]) / min(p["seen"], 50)  # running mean over ~the last 50 steps
            self.bar.update(1)
            self._postfix(p["run_loss"], {k: v for k, v in self.last_eval.items() if k in ("val_loss", "val_acc")})
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
        best.pt. Image tasks log per epoch, synthetic ones every ``eval_every`` steps."""
        p, task = self.progress, self.task
        val = self._score("valid")
        rec = {"epoch": p["epoch"]} if self.is_dataset else {}
        rec.update(step=p["step"], lr=self.opt.param_groups[0]["lr"], train_loss=train_loss,
                   **{f"val_{k}": v for k, v in val.items()})
        threshold = getattr(task, "solved_threshold", None)
        if threshold is not None and self.solved_at is None and val["loss"] <= threshold:
            self.solved_at = p["step"]
            rec["solved"] = True
        key = "val_" + task.primary_metric
        better = (lambda a, b: a > b) if task.higher_is_better else (lambda a, b: a < b)
        if not self.best or better(rec[key], self.best[key]):
            test = {f"test_{k}": v for k, v in self._score("test").items()}
            if self.is_dataset:
                rec.update(test)
            self.best = {**({"epoch": p["epoch"]} if self.is_dataset else {}), "step": p["step"],
                         **{f"val_{k}": v for k, v in val.items()}, **test}
            self.checkpoint(full=False).save(self.out / "best.pt")
        self.last_eval = rec
        self._log(rec)
