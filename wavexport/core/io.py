"""File I/O every layer shares: atomic writes (that never replace a device or a FIFO), the checks on an output a
user names (never one of the command's inputs, never in a folder that is not there), checksums, reading a user's
``.npy``, telling an ONNX path, and telling a checkpoint from an ONNX model by the first bytes."""
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


def is_stdout(path: str | os.PathLike) -> bool:
    """Whether ``path`` names this process's standard output (``/dev/stdout``, ``/dev/fd/1``): a command writing its
    file there must print its report elsewhere."""
    return _descriptor(Path(path)) == 1


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


def _how_to_write(path: Path) -> tuple[bool, int | None]:
    """(written through, descriptor): through for a FIFO, a character device or one of this process's descriptors;
    not for a regular file or nothing yet; anything else (a directory, a socket, a block device) is refused."""
    fd = _descriptor(path)
    try:
        mode = _file_mode(path)
    except OSError as e:  # a symlink loop, a path through a non-directory, no permission
        raise _write_error(path, e) from None
    if fd is not None or (mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode))):
        return True, fd
    if mode is not None and not stat.S_ISREG(mode):
        raise FileWriteError(f"cannot write {path}: it is {_kind(mode)}, not a regular file")
    return False, None


def _link_target(path: Path) -> Path:
    """Where a write lands: a symlink's target (the link stays), else the path itself."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def _missing_parent(path: Path, target: Path) -> FileWriteError | None:
    """The error for a path whose folder is not there (a typo must not become new folders), else None."""
    parent = target.parent
    if parent.is_dir():
        return None
    why = "is not a directory" if os.path.lexists(parent) else "does not exist"
    return FileWriteError(f"cannot write {path}: the folder {parent} {why}")


def atomic_write(path: str | os.PathLike, write, parents: bool = True) -> None:
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

    ``parents``: create missing folders (a run directory's files); False for a path a user typed, where a missing
    folder is a typo and a :class:`FileWriteError`.
    """
    path = Path(path)
    through, fd = _how_to_write(path)
    if through:
        _write_through(path, write, fd)
        return
    target = _link_target(path)
    if not parents and (err := _missing_parent(path, target)):
        raise err
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


def _same_file(a, b) -> bool:
    """Whether two paths name one file: hard links and symlinks included (by inode), else by resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def check_output(path: str | os.PathLike, inputs=(), suffix: str | None = None, what: str = "") -> None:
    """Refuse, before any work is done, an output path a user named that would destroy something or land
    somewhere unexpected; the write itself then goes through :func:`atomic_write`.

    ``inputs``: ``(label, path)`` pairs the command reads: the output must not be any of them (also through a hard
    link or a symlink). ``suffix``: what a regular-file output must end in, since the rest of the tool tells files
    apart by suffix (``.onnx``: :func:`is_onnx_path`). The folder must exist. A FIFO, a character device or a
    descriptor (``/dev/stdout``) is written through, so it needs no suffix; a directory, a socket or a block
    device is refused.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    for label, other in inputs:
        if other is not None and os.path.lexists(other) and _same_file(path, other):
            raise InputError(f"{name} is the same file as {label} {other}: writing it would destroy it; "
                             "choose another output path")
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; give the path of the {suffix + ' ' if suffix else ''}file to write")
    through, _ = _how_to_write(path)
    if through:
        return
    if suffix and not path.name.lower().endswith(suffix):
        raise InputError(f"{name} must end in {suffix} (wavexport tells its files apart by their suffix)")
    if err := _missing_parent(path, _link_target(path)):
        raise err


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


# --- what a file holds, from its first bytes (cheap: an error message's worth of certainty) ----------------------
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_ONNX_NEXT_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields 2-8, after ir_version (field 1)


def _looks_like_onnx(head: bytes) -> bool:
    """A serialized ``ModelProto`` starts with its ir_version (field 1, a small varint), then its next field:
    protobuf writers emit fields in number order, so every ONNX file from onnx.save or torch.onnx starts so."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 0x7F and head[2] in _ONNX_NEXT_TAGS


def file_format(path: str | os.PathLike) -> str:
    """What a file holds, judged by its first 16 bytes: ``"torch"`` (a zip archive, as ``torch.save`` writes, or a
    legacy pickle), ``"onnx"`` (a protobuf that starts as a ModelProto does), ``"empty"`` or ``"other"``. For
    error messages that say what was passed instead of a decoder's complaint; raises ``OSError`` if unreadable."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head.startswith(ZIP_MAGIC) or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5):  # pickle PROTO 2-5
        return "torch"
    return "onnx" if _looks_like_onnx(head) else "other"


def file_head(path: str | os.PathLike, n: int = 12) -> bytes:
    """The first ``n`` bytes (to show what a file that is neither format starts with)."""
    with open(path, "rb") as f:
        return f.read(n)


def check_onnx_file(path: str | os.PathLike, error=InputError) -> None:
    """Refuse, with one line of type ``error``, a path where an ONNX model is expected that is missing, a directory
    or a PyTorch checkpoint. Anything else is left to the ONNX reader (whose message says what is wrong)."""
    p = os.fspath(path)
    if os.path.isdir(p):
        raise error(f"{p} is a directory, not an ONNX model: give the path of a .onnx file")
    if not os.path.exists(p):
        raise error(f"{p}: no such file")
    if not os.path.isfile(p):  # a FIFO, <(process substitution): reading its first bytes would consume them
        return
    try:
        kind = file_format(p)
    except OSError as e:
        raise error(f"{p}: cannot read it ({e.strerror or e})") from None
    if kind == "torch":
        raise error(f"{p} is a PyTorch checkpoint, not an ONNX model: export it first (wavexport export {p} "
                    "out.onnx)")
    if kind == "empty":
        raise error(f"{p} is not a readable ONNX file (empty: 0 bytes)")


def read_npy(path: str | os.PathLike, what: str = "--input") -> np.ndarray:
    """One numeric array from a user's ``.npy`` file (``run --input``, ``plot --input``); never unpickles."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a directory, not a .npy file")
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
