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

from .. import __version__
from ..errors import WavexportError
from ..models import build_model, resolve_config
from ..tasks import DatasetTask, Split, SyntheticTask, make_task, resolve_data_dir
from .checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from .config import TrainConfig

HELD_OUT_SEEDS = {"valid": 1_000_003, "test": 2_000_003}  # offsets from the run seed for fixed evaluation draws


class TrainingError(WavexportError):
    """A run cannot start or continue (bad config, clobbering an existing run, mismatched resume)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise TrainingError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device(name)


# --- evaluation --------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_split(model, task: DatasetTask, split: Split, device, batch_size: int = 500, seed: int = 0,
                   progress: bool = False) -> dict[str, float]:
    """Mean metrics over a split. Noise (nsCIFAR10) comes from a fixed seed, so results are reproducible."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    totals: dict[str, float] = {}
    n = len(split)
    for i in tqdm(range(0, n, batch_size), desc="eval", leave=False, disable=not progress, unit="batch"):
        xs = task.inputs(split.x[i:i + batch_size].to(device), gen)
        ys, _ = model(xs, last_only=task.last_only)
        for k, v in task.metrics(ys, split.y[i:i + batch_size].to(device)).items():
            totals[k] = totals.get(k, 0.0) + v
    return {k: v / max(n, 1) for k, v in totals.items()}


HELD_OUT_BLOCK = 500  # a synthetic held-out stream is drawn in blocks of this size, whatever is asked of it
MAX_HELD_OUT = 100_000  # the stream is drawn in order: bound the work an index typo can ask for


def held_out(task: SyntheticTask, seed: int, start: int = 0, n: int = 1):
    """Samples ``start .. start+n-1`` of the fixed held-out stream drawn from ``seed``, in chunks of at most
    ``HELD_OUT_BLOCK``: (xs, targets) pairs. Sample i is the same whoever asks and however many they ask for, so
    ``eval``, ``sample --index``, ``plot --task-sample`` and the int8 check all see the same sequences."""
    gen = torch.Generator().manual_seed(seed)
    pos, end = 0, start + n
    while pos < end:
        xs, y = task.sample(HELD_OUT_BLOCK, gen)
        lo, hi = max(start - pos, 0), min(end - pos, HELD_OUT_BLOCK)
        if lo < hi:
            yield xs[lo:hi], y[lo:hi]
        pos += HELD_OUT_BLOCK


@torch.no_grad()
def evaluate_synthetic(model, task: SyntheticTask, n: int, seed: int, device):
    """Mean metrics on the first ``n`` samples of the held-out stream of ``seed``: the same set at every
    evaluation."""
    model.eval()
    totals: dict[str, float] = {}
    for xs, y in held_out(task, seed, 0, n):
        ys, _ = model(xs.to(device), last_only=task.last_only)
        for k, v in task.metrics(ys, y.to(device)).items():
            totals[k] = totals.get(k, 0.0) + v
    return {k: v / max(n, 1) for k, v in totals.items()}


def load_eval_splits(task: DatasetTask, data_dir, seed: int, limit: int | None = None) -> dict[str, Split]:
    splits = task.load_splits(resolve_data_dir(data_dir), seed)
    if limit:
        for name in ("valid", "test"):
            s = splits[name]
            splits[name] = Split(s.x[:limit], s.y[:limit])
    return splits


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
            resumed = load_checkpoint(ckpt_path)
            cfg = self._merge_resume(cfg, TrainConfig.from_dict(resumed["train_config"]), resume_overrides or {})
        elif ckpt_path.exists():
            raise TrainingError(f"{self.out} already holds a run (checkpoint.pt); pass --resume to continue it, "
                                "or choose another --out")
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        try:
            self.task = make_task(cfg.task, cfg.seq, cfg.seed, **(resumed["task"]["args"] if resumed else {}))
            self.model_config = resolve_config(cfg.arch, self.task.n_in, self.task.n_out, **cfg.model_overrides())
            self.model = build_model(self.model_config).to(self.device)
        except ValueError as e:
            raise TrainingError(str(e)) from None
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
        if isinstance(self.task, DatasetTask):
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
    RESUME_MAY_CHANGE = ("epochs", "steps", "device", "data_dir", "checkpoint_every")

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

    def _state(self, full: bool = True) -> dict:
        obj = {
            "wavexport_version": __version__,
            "train_config": self.cfg.to_dict(),
            "model_config": self.model_config,
            "task": self.task.state_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "progress": dict(self.progress),
            "best": dict(self.best),
            "solved_at": self.solved_at,
            "metrics": self.summary_metrics(),
        }
        if full:
            obj["optimizer"] = self.opt.state_dict()
            obj["scheduler"] = self.sched.state_dict()
            obj["rng"] = {"data": self.gen.get_state(), "torch": torch.get_rng_state()}
        return obj

    def _restore(self, ck: dict) -> None:
        try:
            self.model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.gen.set_state(ck["rng"]["data"])
            torch.set_rng_state(ck["rng"]["torch"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{ck['path']}: cannot resume from it ({e})") from None
        self.progress = dict(ck["progress"])
        self.best = dict(ck.get("best") or {})
        self.solved_at = ck.get("solved_at")
        # Drop log lines written after this checkpoint, so the resumed run does not log them twice.
        log = self.out / "metrics.jsonl"
        if log.exists():
            lines = log.read_text().splitlines(keepends=True)[: self.progress["log_lines"]]
            atomic_write(log, lambda tmp: Path(tmp).write_text("".join(lines)))

    def save(self) -> None:
        self._tick()
        save_checkpoint(self._state(), self.out / "checkpoint.pt")

    def summary_metrics(self) -> dict:
        """The metrics a checkpoint reports: those of the best evaluation (highest validation accuracy for image
        tasks, the paper's protocol; lowest held-out loss for synthetic ones), with the test metrics taken then."""
        m = dict(self.best)
        if getattr(self.task, "solved_threshold", None) is not None:
            m["solved_at"] = self.solved_at
        if self.cfg.eval_limit and isinstance(self.task, DatasetTask):
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
        if isinstance(self.task, DatasetTask):
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
            if isinstance(self.task, DatasetTask):
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
                self._evaluate_epoch(p["run_loss"])
                self.save()
            elif p["step"] >= total:  # budget ends inside an epoch: evaluate what we have
                self._evaluate_epoch(p["run_loss"])

    def _last_short(self) -> dict:
        return {k: v for k, v in self.last_eval.items() if k in ("val_acc",)}

    def _evaluate_epoch(self, train_loss: float) -> None:
        cfg, p = self.cfg, self.progress
        val = evaluate_split(self.model, self.task, self.splits["valid"], self.device,
                             seed=cfg.seed + HELD_OUT_SEEDS["valid"], progress=not self.quiet)
        rec = {"epoch": p["epoch"], "step": p["step"], "lr": self.opt.param_groups[0]["lr"],
               "train_loss": train_loss, "val_loss": val["loss"], "val_acc": val["acc"]}
        if not self.best or val["acc"] > self.best["val_acc"]:
            test = evaluate_split(self.model, self.task, self.splits["test"], self.device,
                                  seed=cfg.seed + HELD_OUT_SEEDS["test"], progress=not self.quiet)
            rec.update(test_loss=test["loss"], test_acc=test["acc"])
            self.best = {"epoch": p["epoch"], "step": p["step"], "val_acc": val["acc"], "val_loss": val["loss"],
                         "test_acc": test["acc"], "test_loss": test["loss"]}
            save_checkpoint(self._state(full=False), self.out / "best.pt")
        self.last_eval = rec
        self._log(rec)

    def _run_synthetic(self, total: int) -> None:
        cfg, p = self.cfg, self.progress
        while p["step"] < total and not self._stop:
            xs, y = self.task.sample(cfg.batch_size, self.gen)
            loss = self._train_step(xs.to(self.device), y.to(self.device))
            self.sched.step()
            p["seen"] += 1
            p["run_loss"] += (loss - p["run_loss"]) / min(p["seen"], 50)  # running mean over ~the last 50 steps
            self.bar.update(1)
            self._postfix(p["run_loss"], {k: v for k, v in self.last_eval.items() if k in ("val_loss", "val_acc")})
            if p["step"] % cfg.eval_every == 0 or p["step"] == total:
                self._evaluate_synthetic(p["run_loss"])
                self.save()
            elif p["step"] % cfg.checkpoint_every == 0:
                self.save()

    def _evaluate_synthetic(self, train_loss: float) -> None:
        cfg, p = self.cfg, self.progress
        val = evaluate_synthetic(self.model, self.task, cfg.eval_batch, cfg.seed + HELD_OUT_SEEDS["valid"],
                                 self.device)
        rec = {"step": p["step"], "lr": self.opt.param_groups[0]["lr"], "train_loss": train_loss,
               **{f"val_{k}": v for k, v in val.items()}}
        threshold = getattr(self.task, "solved_threshold", None)
        if threshold is not None and self.solved_at is None and val["loss"] <= threshold:
            self.solved_at = p["step"]
            rec["solved"] = True
        if not self.best or val["loss"] < self.best["val_loss"]:
            test = evaluate_synthetic(self.model, self.task, cfg.eval_batch, cfg.seed + HELD_OUT_SEEDS["test"],
                                      self.device)
            self.best = {"step": p["step"], **{f"val_{k}": v for k, v in val.items()},
                         **{f"test_{k}": v for k, v in test.items()}}
            save_checkpoint(self._state(full=False), self.out / "best.pt")
        self.last_eval = rec
        self._log(rec)


def evaluate_checkpoint(ckpt: dict, split: str = "test", data_dir=None, limit: int | None = None,
                        device: str = "auto", progress: bool = False) -> dict:
    """A checkpoint's task metric on ``split``, with the data, permutation and held-out draws training used."""
    from .checkpoint import model_from_checkpoint

    if split not in HELD_OUT_SEEDS:
        raise TrainingError(f"unknown split {split!r} (test or valid)")
    model, task = model_from_checkpoint(ckpt)
    cfg = TrainConfig.from_dict(ckpt.get("train_config", {"task": task.name}))
    dev = resolve_device(device)
    model.to(dev)
    seed = cfg.seed + HELD_OUT_SEEDS[split]
    if isinstance(task, DatasetTask):
        data = load_eval_splits(task, resolve_data_dir(data_dir, cfg.data_dir), cfg.seed, limit)[split]
        metrics = evaluate_split(model, task, data, dev, seed=seed, progress=progress)
        n = len(data)
    else:
        n = limit or cfg.eval_batch
        metrics = evaluate_synthetic(model, task, n, seed, dev)
    return {**metrics, "n": n}
