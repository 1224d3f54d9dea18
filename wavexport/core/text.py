"""Text shared by every layer that reports to a person (the CLI, sweep and reproduce reports)."""
from __future__ import annotations


def fmt_duration(seconds: float | None) -> str:
    """``42s``, ``3m07s``, ``2h05m09s``; ``-`` for an unknown duration."""
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
