"""The line protocol of ``wavexport run --stream``: one timestep per input line, one JSON line per reported step.

Plain functions over any streamer, so a service can reuse them without the CLI.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from ..core.errors import StreamError


def parse_line(line: str, n_in: int) -> np.ndarray:
    """One timestep: numbers separated by spaces and/or commas, or a JSON array -> float32 [n_in], finite."""
    text = line.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"bad JSON array ({e.msg})") from None
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise ValueError("the JSON array must hold numbers only")
    else:
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError as e:
            raise ValueError(f"not a number: {str(e).split(': ', 1)[-1]}") from None
    if len(values) != n_in:
        raise ValueError(f"expected {n_in} value{'s' if n_in != 1 else ''}, got {len(values)}")
    with np.errstate(over="ignore"):
        try:
            x = np.asarray([float(v) for v in values], dtype=np.float64).astype(np.float32)
        except OverflowError:  # a JSON integer beyond float range
            x = np.array([np.inf], np.float32)
    if not np.isfinite(x).all():  # checked as float32, the model's dtype: 1e39 is infinite there
        raise ValueError("NaN or infinite value (or beyond float32 range)")
    return x


def step_record(t: int, y: np.ndarray, kind: str) -> dict:
    rec = {"step": t, "y": [round(float(v), 7) for v in y]}
    if kind == "logits":
        z = np.exp(y - y.max())
        p = z / z.sum()
        k = int(p.argmax())
        rec.update(pred=k, prob=round(float(p[k]), 7))
    return rec


def stream(sess, lines, out, every: int = 1, final: bool = False, reset_on_blank: bool = True,
           skip_bad: bool = False, scale: float | None = None, err=sys.stderr) -> int:
    """The stdin protocol: one timestep per line in, one JSON line per (reported) step out, flushed at once.
    Returns the number of bad lines skipped; raises StreamError on the first bad line unless ``skip_bad``."""
    kind = sess.contract.output_kind
    n_in = sess.n_in
    sess.reset(1)
    t, last, skipped = 0, None, 0

    def emit(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    def end_sequence():
        nonlocal t, last
        if final and last is not None:
            emit(last)
        t, last = 0, None
        sess.reset(1)

    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            if reset_on_blank and t:
                end_sequence()
            continue
        try:
            values = parse_line(line, n_in)
        except ValueError as e:
            if not skip_bad:
                raise StreamError(f"line {lineno}: {e}") from None
            skipped += 1
            err.write(json.dumps({"line": lineno, "error": str(e)}) + "\n")
            err.flush()
            continue
        x = values
        if scale is not None:
            x *= np.float32(scale)
        y = sess.step(x)
        rec = step_record(t, y, kind)
        t += 1
        last = rec
        if not final and t % every == 0:
            emit(rec)
    if final and last is not None:
        emit(last)
    return skipped
