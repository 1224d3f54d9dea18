"""File I/O every layer shares: atomic writes (that never replace a device or a FIFO), checksums, reading a user's
``.npy``, telling an ONNX path."""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import FileWriteError, InputError

_UMASK = os.umask(0)  # read once at import: os.umask can only be read by setting it, which races with threads
os.umask(_UMASK)


# Paths that name one of this process's open descriptors (``--output /dev/stdout``): written through that
# descriptor, so the bytes land where the shell pointed it (a pipe, a terminal, a redirected file at its offset).
_FD_PATH = re.compile(r"/(?:dev/fd|proc/self/fd|proc/(\d+)/fd)/(\d+)")
_STD_PATHS = {"/dev/stdout": 1, "/dev/stderr": 2}


def _write_error(path, e: OSError) -> FileWriteError:
    """One line naming the path and the cause: ``cannot write out.onnx: No space left on device (ENOSPC)``."""
    cause = e.strerror or str(e) or type(e).__name__
    name = errno.errorcode.get(e.errno) if e.errno else None
    text = f"cannot write {os.fspath(path)}: {cause}" + (f" ({name})" if name else "")
    other = getattr(e, "filename", None)
    if other and os.fspath(other) != os.fspath(path) and not os.path.basename(os.fspath(other)).endswith(".tmp"):
        text += f" [{other}]"
    return FileWriteError(text)


def _descriptor(path: Path) -> int | None:
    """The descriptor number a path like ``/dev/stdout`` or ``/proc/self/fd/3`` names, else None."""
    text = os.path.abspath(os.fspath(path))
    if text in _STD_PATHS:
        return _STD_PATHS[text]
    m = _FD_PATH.fullmatch(text)
    if m and (m.group(1) is None or int(m.group(1)) == os.getpid()):
        return int(m.group(2))
    return None


def _file_mode(path: Path) -> int | None:
    """``st_mode`` of what ``path`` names, symlinks followed; None when nothing is there (a dangling link too)."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _copy_to_descriptor(src: str, fd: int) -> None:
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]


def _write_through(path: Path, write, fd: int | None) -> None:
    """A FIFO, a character device or an open descriptor: the content is made in a private temp file first (so
    ``write`` may read it back, as export's verification does), then copied in; nothing is renamed or created."""
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=".wavexport.", suffix=".tmp")
        os.close(handle)
        write(tmp)
        if fd is not None:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (AttributeError, ValueError, OSError):
                    pass
            out = os.dup(fd)
        else:
            out = os.open(path, os.O_WRONLY | getattr(os, "O_NOCTTY", 0))
        try:
            _copy_to_descriptor(tmp, out)
        finally:
            os.close(out)
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        _discard(tmp)


def _discard(tmp: str | None) -> None:
    """Remove a temp file that did not become the result (already gone is fine)."""
    if tmp is not None:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)``, then put the result at ``path``; raises :class:`FileWriteError` (one line: the path
    and the cause) for any file-system error, leaving no partial file and any previous file intact.

    What ``path`` names decides how:

    - a regular file, or nothing yet: ``tmp_path`` is a temp file beside it, fsynced and renamed onto it, so
      readers never see a half-written file. The result gets the permissions the umask gives any new file
      (mkstemp's temp file is private, 0600);
    - a symlink: followed; the file it points to is replaced that way, and the link stays;
    - a FIFO, a character device (``/dev/null``, a terminal) or one of this process's descriptors
      (``/dev/stdout``, ``/dev/fd/N``): written to directly, never renamed over;
    - anything else (a directory, a socket, a block device): refused.
    """
    path = Path(path)
    fd = _descriptor(path)
    try:
        mode = _file_mode(path)
    except OSError as e:  # a symlink loop, a path through a non-directory, no permission
        raise _write_error(path, e) from None
    if fd is not None or (mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode))):
        _write_through(path, write, fd)
        return
    if mode is not None and not stat.S_ISREG(mode):
        raise FileWriteError(f"cannot write {path}: it is {_kind(mode)}, not a regular file")
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(handle)
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it the file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
        tmp = None
    except OSError as e:
        raise _write_error(path, e) from None
    finally:
        _discard(tmp)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log file (``metrics.jsonl``); a file-system error is a :class:`FileWriteError`."""
    try:
        with open(path, "a") as f:
            f.write(line if line.endswith("\n") else line + "\n")
    except OSError as e:
        raise _write_error(path, e) from None


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
