"""Reading a user's ``.npy`` array with one-line errors (``run --input``, ``plot --input``)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError


def read_npy(path: str | os.PathLike, what: str = "--input") -> np.ndarray:
    """One numeric array from a ``.npy`` file; never unpickles."""
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
