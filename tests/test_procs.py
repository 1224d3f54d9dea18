import os
import signal
import subprocess
import sys
import threading

from wavexport.core.procs import wait_passing_interrupts

# A child that counts the SIGINTs it gets, stops at the first and, after a moment (time for more to arrive), exits
# with 129 + their number: 130 for exactly one.
CHILD = r"""
import signal, sys, time
n = []
signal.signal(signal.SIGINT, lambda *a: n.append(1))
print("ready", flush=True)
while not n:
    time.sleep(0.01)
time.sleep(0.5)
sys.exit(129 + len(n))
"""


def test_first_sigint_or_sigterm_reaches_each_child_once():
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                              preexec_fn=os.setpgrp) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    me = os.getpid()
    timers = [threading.Timer(0.2, os.kill, (me, signal.SIGTERM)), threading.Timer(0.3, os.kill, (me, signal.SIGINT))]
    for t in timers:
        t.start()
    codes, signum = wait_passing_interrupts(procs)
    assert codes == [130, 130] and signum == signal.SIGTERM  # the first that came
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_without_a_signal_the_exit_codes_pass_through():
    procs = [subprocess.Popen([sys.executable, "-c", f"raise SystemExit({c})"]) for c in (0, 3)]
    assert wait_passing_interrupts(procs) == ([0, 3], 0)
