"""The line protocol of ``wavexport run --stream``: one timestep per input line, one JSON line per reported step.

Plain functions over any streamer, so a service can reuse them without the CLI. Every output line is valid JSON
(no NaN/Infinity: a non-finite output is ``null`` with ``"finite": false``), and an input line longer than
:func:`max_line_chars` is refused without being held in memory.
"""
from __future__ import annotations

import collections
import json
import math
import sys

import numpy as np

from ..core.errors import StreamError


LINE_BASE_CHARS = 1024      # an input line may hold LINE_BASE_CHARS + LINE_CHARS_PER_INPUT × input.size characters
LINE_CHARS_PER_INPUT = 512  # (a float32 needs at most ~16; the slack lets odd spacing and long literals through)


def max_line_chars(n_in: int) -> int:
    """The longest input line accepted for a model of ``n_in`` inputs (``input.size``), newline excluded."""
    return LINE_BASE_CHARS + LINE_CHARS_PER_INPUT * int(n_in)


def read_lines(source, limit: int):
    """(line, too_long) for each line of ``source``, reading at most ``limit`` + 1 characters at a time: a line
    longer than ``limit`` is reported (and the rest of it skipped) without ever being held whole in memory."""
    readline = getattr(source, "readline", None)
    if readline is None:  # any iterable of strings (a list, a generator)
        for line in source:
            yield line, len(line.rstrip("\r\n")) > limit
        return
    while True:
        line = readline(limit + 1)
        if not line:
            return
        if line.endswith("\n") or len(line) <= limit:
            yield line, False
            continue
        while line and not line.endswith("\n"):  # too long: drop the rest of it, chunk by chunk
            line = readline(limit + 1)
        yield "", True


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
    """One output line. A NaN/inf output (the state overflowed float32, e.g. after inputs of 3e38) is ``null``,
    with ``"pred"``/``"prob"`` null too and ``"finite": false``: still JSON that any parser reads."""
    values = [float(v) for v in y]
    finite = all(math.isfinite(v) for v in values)
    rec = {"step": t, "y": [round(v, 7) if math.isfinite(v) else None for v in values]}
    if kind == "logits":
        if finite:
            z = np.exp(y - y.max())
            p = z / z.sum()
            k = int(p.argmax())
            rec.update(pred=k, prob=round(float(p[k]), 7))
        else:
            rec.update(pred=None, prob=None)
    if not finite:
        rec["finite"] = False
    return rec


def stream(sess, lines, out, every: int = 1, final: bool = False, reset_on_blank: bool = True,
           skip_bad: bool = False, scale: float | None = None, err=sys.stderr) -> int:
    """The stdin protocol: one timestep per line in, one JSON line per (reported) step out, flushed at once.
    ``every`` K reports steps K-1, 2K-1, ... and always the last step of each sequence; ``final`` only the steps
    that carry the task's answer: the last, or the last K for a ``last:K`` readout (copy's 10 recalled symbols).
    Returns the number of bad lines skipped; raises StreamError on the first bad line unless ``skip_bad``."""
    kind = sess.contract.output_kind
    n_in = sess.n_in
    limit = max_line_chars(n_in)
    sess.reset(1)
    t, skipped = 0, 0
    # The latest records, [record, sent]: a sequence's end reports those of its answer not reported yet.
    tail: collections.deque = collections.deque(maxlen=(sess.contract.readout_steps or 1) if final else 1)

    def emit(rec):
        out.write(json.dumps(rec, allow_nan=False) + "\n")
        out.flush()

    def flush_tail():
        for item in tail:
            if not item[1]:
                emit(item[0])
        tail.clear()

    def end_sequence():
        nonlocal t
        flush_tail()
        t = 0
        sess.reset(1)

    for lineno, (line, too_long) in enumerate(read_lines(lines, limit), 1):
        if not too_long and not line.strip():
            if reset_on_blank and t:
                end_sequence()
            continue
        try:
            if too_long:
                raise ValueError(f"longer than {limit} characters (the limit for {n_in} input value"
                                 f"{'s' if n_in != 1 else ''}: {LINE_BASE_CHARS} + {LINE_CHARS_PER_INPUT} per value)")
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
        item = [step_record(t, y, kind), False]
        t += 1
        tail.append(item)
        if not final and t % every == 0:
            emit(item[0])
            item[1] = True
    flush_tail()
    return skipped
