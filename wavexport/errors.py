"""Errors caused by what the user asked for. The CLI prints them as one line and exits with status 2."""


class WavexportError(Exception):
    exit_code = 2
