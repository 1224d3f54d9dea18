"""Child processes that stop gracefully: the one way this package waits on the processes it launches."""
from __future__ import annotations

import signal
import subprocess

# How a stopped ``train`` exits after saving its checkpoint: 128 + the signal, as the shell reports a killed process.
INTERRUPTED_CODES = (128 + signal.SIGINT, 128 + signal.SIGTERM)  # 130 (Ctrl-C), 143 (SIGTERM)


def wait_passing_interrupts(procs: list[subprocess.Popen]) -> tuple[list[int], bool]:
    """Wait for ``procs`` (started in their own process groups, so a terminal's Ctrl-C reaches only this process),
    passing the first SIGINT or SIGTERM this process gets on to each still running child once, as SIGINT: their
    own graceful stop (finish the step, checkpoint, exit). Returns (exit codes, the first signal's number, or 0 if
    none came), so a launcher can exit as the shell reports a process stopped by it: 128 + the number."""
    got: list[int] = []

    def forward(signum, frame):
        if not got:
            for p in procs:
                if p.poll() is None:
                    try:
                        p.send_signal(signal.SIGINT)
                    except OSError:  # it ended meanwhile
                        pass
        got.append(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return codes, (got[0] if got else 0)


__all__ = ["wait_passing_interrupts"]
