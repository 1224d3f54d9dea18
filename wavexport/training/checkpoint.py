"""Checkpoint files: written atomically, read back with clear errors, and turned into (model, task)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..errors import WavexportError
from ..models import ModelConfigError, build_model
from ..tasks import task_from_state

FORMAT = "wavexport.checkpoint/1"


class CheckpointError(WavexportError, ValueError):
    """Not a wavexport checkpoint, or a damaged one."""


_UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it, which races with threads
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file. The result gets
    the permissions the umask gives any new file (mkstemp's temp file is private, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it the file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(obj: dict, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **obj}, tmp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "checkpoint.pt"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise CheckpointError(f"{path} is a directory without best.pt or checkpoint.pt")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip, pickle and EOF errors all mean "not readable"
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a wavexport checkpoint (no '{FORMAT}' format tag)")
    for key in ("model_config", "task", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path} is incomplete: missing '{key}'")
    ckpt["path"] = str(path)
    return ckpt


def model_from_checkpoint(ckpt: dict):
    """(model in eval mode on the CPU, task) exactly as trained, the psMNIST permutation included."""
    try:
        model = build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
        task = task_from_state(ckpt["task"])
    except (ModelConfigError, KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: cannot rebuild the model ({e})") from None
    return model.eval(), task
