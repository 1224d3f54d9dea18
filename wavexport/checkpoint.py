"""The checkpoint: one typed record of a run, written atomically and read back with clear errors.

``checkpoint.pt`` holds everything a run needs to resume exactly (weights, optimizer, schedule, RNG states,
position); ``best.pt`` the model at its best evaluation, without the resume state. Nothing outside this module
reads the file's keys: everyone else uses :class:`Checkpoint`'s fields.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from . import __version__
from .config import RESUME_MAY_CHANGE, TrainConfig, resume_config
from .core.errors import CheckpointError, FileWriteError, InputError, ModelConfigError
from .core.io import atomic_write, file_format, file_head
from .models import RecurrentModel, build_model
from .tasks import Task, task_from_state

FORMAT = "wavexport.checkpoint/1"
RUN_FILES = ("best.pt", "checkpoint.pt")  # what a run directory holds, in the order ``load`` prefers them
SNAPSHOTS = "snapshots"  # a run directory's folder of weights-only snapshots (train --snapshot-every)
DIGEST_KEY = "digest"   # "sha256:<hex>" of content_digest(everything else in the file); absent in older files


def _walk(h, obj) -> None:
    """Feed ``obj`` to the hash ``h`` canonically: a tensor by dtype, shape and bytes; a dict by its items in key
    order (keys by repr); a list or tuple item by item; anything else by a stable repr (floats round-trip)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k in sorted(obj, key=repr):
            h.update(f"K{k!r}=".encode())
            _walk(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _walk(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def content_digest(content: dict) -> str:
    """``sha256:<hex>`` over a canonical walk of a checkpoint's content (its ``digest`` key left out): the same for
    the same weights, optimizer state and records however the file's zip/pickle bytes are laid out."""
    h = hashlib.sha256()
    _walk(h, {k: v for k, v in content.items() if k != DIGEST_KEY})
    return "sha256:" + h.hexdigest()


@dataclass
class Checkpoint:
    train_config: TrainConfig
    model_config: dict                  # the resolved model config: {"arch", "n_in", "n_out", **kwargs}
    task: dict                          # the task's state: {"name", "args"}
    model: dict                         # the model's state_dict (CPU tensors)
    metrics: dict = field(default_factory=dict)   # the best evaluation's metrics (what ``eval`` and exports report)
    progress: dict = field(default_factory=dict)  # step, epoch, batch, ... (trainer bookkeeping)
    best: dict = field(default_factory=dict)
    solved_at: int | None = None
    optimizer: dict | None = None       # resume state: present in checkpoint.pt, absent in best.pt
    scheduler: dict | None = None
    rng: dict | None = None
    wavexport_version: str = __version__
    path: str | None = field(default=None, compare=False)  # where it was read from

    # --- building ------------------------------------------------------------------------------------------------
    @classmethod
    def of(cls, model: RecurrentModel, model_config: dict, task: Task, train_config: TrainConfig | None = None,
           **extra) -> "Checkpoint":
        """A checkpoint of ``model`` as it is now (tools and tests that make models without training them)."""
        cfg = train_config or TrainConfig(task=task.name, arch=model_config.get("arch", "wrnn"))
        return cls(train_config=cfg, model_config=dict(model_config), task=task.state_dict(),
                   model={k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra)

    def build(self) -> tuple[RecurrentModel, Task]:
        """(model in eval mode on the CPU, task) exactly as trained, the psMNIST permutation included."""
        try:
            model = build_model(self.model_config)
            model.load_state_dict(self.model)
            task = task_from_state(self.task)
        except (ModelConfigError, KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{self.path or 'checkpoint'}: cannot rebuild the model ({e})") from None
        return model.eval(), task

    # --- what it says --------------------------------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        return self.task["name"]

    @property
    def arch(self) -> str:
        return self.model_config.get("arch", "?")

    @property
    def resumable(self) -> bool:
        return self.optimizer is not None

    def test_metrics(self) -> dict:
        """The test metrics (taken at the best validation point) and what qualifies them (eval_limit, solved_at)."""
        return {k: v for k, v in self.metrics.items() if k.startswith("test_") or k in ("eval_limit", "solved_at")}

    # --- files ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "path"}
        d["train_config"] = self.train_config.to_dict()
        return {"format": FORMAT, **{k: v for k, v in d.items() if v is not None or k == "solved_at"}}

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically, with the content's digest stored next to it (checked by :meth:`load`). Serialised in
        memory first, so a full or read-only disk is a Python ``OSError`` (a :class:`FileWriteError`, one line)."""
        content = self.to_dict()
        content[DIGEST_KEY] = content_digest(content)
        buf = io.BytesIO()
        torch.save(content, buf)

        def write(tmp):
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location="cpu") -> "Checkpoint":
        """A ``.pt`` file, or a run directory (its ``best.pt``, else its ``checkpoint.pt``)."""
        path = Path(path)
        if path.is_dir():
            for name in RUN_FILES:
                if (path / name).exists():
                    path = path / name
                    break
            else:
                raise CheckpointError(f"{path} is a directory without best.pt or checkpoint.pt")
        if not path.exists():
            raise CheckpointError(f"{path}: no such file")
        _check_format(path)
        try:
            raw = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only" not in str(e).lower():
                raise CheckpointError(f"{path} is not a readable checkpoint (truncated or damaged: "
                                      f"{_size(path)})") from None
            raise CheckpointError(f"{path} is not a wavexport checkpoint (it holds Python objects, e.g. a whole "
                                  "model saved with torch.save(model); a checkpoint holds only tensors and plain "
                                  "data, and wavexport never runs a file's code)") from None
        except Exception:  # noqa: BLE001 - zip, pickle and EOF errors of a torch file all mean "cut short or damaged"
            raise CheckpointError(f"{path} is not a readable checkpoint (truncated or damaged: {_size(path)})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a wavexport checkpoint (no '{FORMAT}' format tag)")
        stored = raw.get(DIGEST_KEY)  # files written before digests existed have none: they load as before
        if stored is not None:
            try:
                actual = content_digest(raw)
            except Exception as e:  # noqa: BLE001 - whatever a damaged structure raises while being walked
                actual = f"unreadable ({type(e).__name__})"
            if actual != stored:
                raise CheckpointError(f"{path}: corrupt checkpoint (its content does not match the digest stored "
                                      "with it: the file was changed or damaged after it was written)")
        for key in ("model_config", "task", "model"):
            if key not in raw:
                raise CheckpointError(f"{path} is incomplete: missing '{key}'")
        known = {f.name for f in fields(cls)} - {"path", "train_config"}
        tc = raw.get("train_config") or {"task": raw["task"].get("name", ""),
                                         "arch": raw["model_config"].get("arch", "wrnn")}
        try:
            return cls(train_config=TrainConfig.from_dict(tc), path=str(path),
                       **{k: v for k, v in raw.items() if k in known and v is not None})
        except TypeError as e:
            raise CheckpointError(f"{path} is damaged ({e})") from None


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size:,} bytes"
    except OSError:
        return "size unknown"


def _check_format(path: Path) -> None:
    """Refuse a file that is not a torch file by its first bytes, saying what it is instead (an ONNX model, an
    empty file, text), rather than the error torch's unpickler stumbles into (``KeyError: 101``, wrong advice to
    set ``weights_only=False``)."""
    try:
        kind = file_format(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    if kind == "torch":
        return
    if kind == "onnx":
        raise CheckpointError(f"{path} is not a wavexport checkpoint (it looks like an ONNX model: pass it where a "
                              "model.onnx is expected, or rename it to .onnx)")
    if kind == "empty":
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or empty: 0 bytes)")
    raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch file, which is a zip archive: this "
                          f"one starts with {file_head(path)!r}; {_size(path)})")


def run_complete(run_dir: str | os.PathLike, budget: dict | None = None) -> bool:
    """Whether the run in ``run_dir`` is over, so that resuming it would do nothing: it stopped solved (with
    ``stop_when_solved``), or used its step budget, or (epochs alone) its epochs. ``budget``: train options among
    ``steps``, ``epochs``, ``stop_when_solved`` that replace the run's own (what a resume with them would run to).
    No readable checkpoint.pt: not complete."""
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        return False
    try:
        ck = Checkpoint.load(path)
    except CheckpointError:
        return False
    want = {k: v for k, v in (budget or {}).items() if k in ("steps", "epochs", "stop_when_solved")}
    cfg, p = resume_config(ck.train_config, want), ck.progress  # the budget ``train --resume`` would run to
    steps, epochs = cfg.steps, cfg.epochs
    if cfg.stop_when_solved and ck.solved_at is not None:
        return True
    if steps and p.get("step", 0) >= steps:
        return True
    return bool(epochs and not steps and p.get("epoch", 0) >= epochs)


def snapshot_path(run_dir: str | os.PathLike, step: int) -> Path:
    """Where a run keeps its weights at ``step`` (``train --snapshot-every``)."""
    return Path(run_dir) / SNAPSHOTS / f"step-{step:07d}.pt"


def run_snapshots(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """A run directory's snapshots as (step, path), in step order."""
    found = []
    for f in (Path(run_dir) / SNAPSHOTS).glob("step-*.pt"):
        try:
            found.append((int(f.stem.split("-", 1)[1]), f))
        except ValueError:
            continue
    return sorted(found)


def drop_snapshots_after(run_dir: str | os.PathLike, step: int) -> None:
    """Delete the snapshots of steps after ``step``: left by an attempt that went further than the checkpoint a run
    resumes from (or, ``step`` -1, by one that died before its first checkpoint). The run takes those steps again,
    maybe differently (another budget, a moved LR drop), and an average must not mix the two."""
    for s, f in run_snapshots(run_dir):
        if s > step:
            try:
                f.unlink()
            except OSError as e:
                raise FileWriteError(f"cannot remove the stale snapshot {f}: {e.strerror or e}") from None


def snapshot_files(source: str | os.PathLike, from_step: int | None = None,
                   to_step: int | None = None) -> list[Path]:
    """The checkpoint files ``source`` names: a file itself, or a run directory's snapshots (``train
    --snapshot-every``; also its ``snapshots/`` folder named directly) from ``from_step`` to ``to_step``
    inclusive, in step order."""
    path = Path(source)
    if not path.is_dir():
        if from_step is not None or to_step is not None:
            raise InputError(f"{path} is a file: --from-step and --to-step select among a run directory's snapshots")
        return [path]
    if path.name == SNAPSHOTS and not (path / SNAPSHOTS).is_dir():
        path = path.parent
    found = [f for step, f in run_snapshots(path)
             if (from_step is None or step >= from_step) and (to_step is None or step <= to_step)]
    if not found:
        window = "" if from_step is None and to_step is None else \
            f" from step {from_step if from_step is not None else 0} to {to_step if to_step is not None else 'the end'}"
        raise CheckpointError(f"{path}: no snapshots{window} in {path / SNAPSHOTS} (train with --snapshot-every N "
                              "to keep them)")
    return found


def average_checkpoints(sources: list) -> Checkpoint:
    """The mean of the weights of checkpoints of one run (stochastic weight averaging after the fact: snapshots
    taken at a small constant learning rate, whose mean often generalises better than any of them).

    ``sources``: paths or loaded checkpoints, read one at a time (a running sum). They must be of one model, task
    and training config (what a resume may change aside: budget, device, LR drops still ahead), seed included:
    averaging independently trained networks means nothing. Non-float tensors must be equal. The result is a
    weights-only checkpoint of the latest one's run, without metrics: the caller scores it."""
    if len(sources) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    seen: dict[str, str] = {}
    first = total = last = None
    steps = []
    for src in sources:
        ck = load_checkpoint(src)
        key = os.path.realpath(ck.path) if ck.path else str(id(ck))
        if key in seen:
            raise CheckpointError(f"{ck.path} is given twice (as {seen[key]}): each checkpoint counts once")
        seen[key] = ck.path
        if first is None:
            first, total = ck, {k: v.double() if v.is_floating_point() else v.clone() for k, v in ck.model.items()}
        else:
            _check_same_run(first, ck)
            for k, v in ck.model.items():
                if v.is_floating_point():
                    total[k] += v.double()
                elif not torch.equal(v, total[k]):
                    raise CheckpointError(f"{ck.path} and {first.path} differ in {k}, which cannot be averaged")
        steps.append(int(ck.progress.get("step", -1)))
        if last is None or steps[-1] >= int(last.progress.get("step", -1)):
            last = ck
    mean = {k: (v / len(sources)).to(first.model[k].dtype) if v.is_floating_point() else v for k, v in total.items()}
    return Checkpoint(train_config=last.train_config, model_config=dict(last.model_config), task=dict(last.task),
                      model=mean, progress={"step": int(last.progress.get("step", 0)),
                                            "epoch": last.progress.get("epoch"), "averaged_steps": steps})


def _check_same_run(a: Checkpoint, b: Checkpoint) -> None:
    for what, x, y in (("model", a.model_config, b.model_config), ("task", a.task, b.task)):
        if x != y:
            raise CheckpointError(f"{b.path} and {a.path} hold different {what}s: only checkpoints of one run (one "
                                  "model on one task, the same psMNIST permutation) can be averaged")
    ca, cb = a.train_config.to_dict(), b.train_config.to_dict()
    differ = [k for k in ca if k not in RESUME_MAY_CHANGE and ca[k] != cb.get(k)]
    if differ:
        raise CheckpointError(f"{b.path} and {a.path} come from different runs ({differ[0]} {cb.get(differ[0])!r} vs "
                              f"{ca[differ[0]]!r}): only snapshots of one run can be averaged")
    if set(a.model) != set(b.model) or any(a.model[k].shape != b.model[k].shape or a.model[k].dtype !=
                                           b.model[k].dtype for k in a.model):
        raise CheckpointError(f"{b.path} and {a.path} hold differently shaped weights")


def load_checkpoint(path: str | os.PathLike | Checkpoint) -> Checkpoint:
    """:meth:`Checkpoint.load`, passing a loaded one through (so functions take either)."""
    return path if isinstance(path, Checkpoint) else Checkpoint.load(path)


__all__ = ["Checkpoint", "CheckpointError", "DIGEST_KEY", "FORMAT", "RUN_FILES", "SNAPSHOTS", "average_checkpoints",
           "content_digest", "drop_snapshots_after", "load_checkpoint", "run_complete", "run_snapshots",
           "snapshot_files", "snapshot_path"]
