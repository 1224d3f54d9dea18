"""Errors caused by what the user asked for. The CLI prints them as one line and exits with status 2."""


class WavexportError(Exception):
    exit_code = 2


class InputError(WavexportError):
    """A file or value the user passed in is unusable (missing, unreadable, wrong shape or type)."""
