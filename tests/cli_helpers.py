"""Shared by the test files: invoke the CLI in-process and check the one-line error contract."""
from click.testing import CliRunner

from wavexport.cli import main


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(r, *needles, code=2):
    """A user mistake: exit status ``code``, exactly one line ``error: ...`` naming every needle, no traceback.

    The line goes to stderr and nothing to stdout, so a pipeline reading stdout never takes the error for output.
    Pass the distinctive part of the message as a needle (e.g. ``"x.pt: no such file"``, not ``"no such file"``).
    """
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert r.stdout == "" and r.stderr.strip() == lines[0], r.output
    assert "Traceback" not in r.output, r.output
    for n in needles:
        assert n in lines[0], r.output
