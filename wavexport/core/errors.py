"""Every error wavexport raises for something a user asked for, in one place.

The CLI prints a :class:`WavexportError` as one line ``error: ...`` and exits with its ``exit_code``: 2 for bad
input (the usage convention), 1 for a check that ran and failed. Never a traceback for a user mistake.
"""


class WavexportError(Exception):
    exit_code = 2


class InputError(WavexportError):
    """A file, option or value the user passed in is unusable (missing, unreadable, wrong shape or type)."""


class ContractError(WavexportError):
    """An ONNX file whose metadata does not follow the wavexport contract."""


class DataError(WavexportError):
    """A dataset that is missing, corrupt, or cannot be downloaded."""


class ModelConfigError(WavexportError, ValueError):
    """An architecture name or model option that does not exist or does not fit."""


class CheckpointError(WavexportError, ValueError):
    """Not a wavexport checkpoint, or a damaged one."""


class TrainingError(WavexportError):
    """A run cannot start or continue (bad config, clobbering an existing run, mismatched resume, a run directory
    another process is training in)."""


class DivergedError(TrainingError):
    """Training met a non-finite loss or gradient: the run stops, keeping its last finite checkpoint."""
    exit_code = 1


class FileWriteError(WavexportError):
    """A file cannot be written (read-only or full file system, no permission, a target that is not a regular file,
    FIFO or character device). Nothing partial is left behind: the previous file, if any, is intact."""


class StreamError(WavexportError):
    """Bad input to a streamer: wrong size, dtype, non-finite values, or a batch change without ``reset``."""


class ExportError(WavexportError):
    """The export cannot be made as asked (bad checkpoint, opset, batch, an arch the graph cannot express)."""


class VerificationError(ExportError):
    """The exported graph does not reproduce the PyTorch model (or int8 loses too much): nothing is written."""
    exit_code = 1


class PlotError(WavexportError):
    """A figure cannot be made as asked (missing matplotlib, a model without waves to draw, bad options)."""
