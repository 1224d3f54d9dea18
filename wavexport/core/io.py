"""File I/O every layer shares: atomic writes, checksums, reading a user's ``.npy``, telling an ONNX path."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError

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


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (md5 for the datasets' published sums, sha256 otherwise)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_onnx_path(path) -> bool:
    """Whether a command argument names an exported model (by its extension) rather than a checkpoint."""
    return os.fspath(path).lower().endswith(".onnx")


def read_npy(path: str | os.PathLike, what: str = "--input") -> np.ndarray:
    """One numeric array from a user's ``.npy`` file (``run --input``, ``plot --input``); never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p}: no such file")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{what} {p} is not a readable .npy array ({e})") from None
    if not isinstance(arr, np.ndarray):
        arr.close()
        raise InputError(f"{what} {p} holds several arrays (.npz); save one array with numpy.save")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} {p}: expected a numeric array, found dtype {arr.dtype}")
    return arr
