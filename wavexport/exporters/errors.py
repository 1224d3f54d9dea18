"""Export errors: bad input exits 2 (the CLI convention); a model that fails verification exits 1."""
from ..errors import WavexportError


class ExportError(WavexportError):
    """The export cannot be made as asked (bad checkpoint, opset, batch, an arch the graph cannot express)."""


class VerificationError(ExportError):
    """The exported graph does not reproduce the PyTorch model (or int8 loses too much): nothing is written."""
    exit_code = 1
