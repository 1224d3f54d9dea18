"""ONNX export of wavexport models: a step graph with explicit state I/O, or one Scan over a whole sequence.

``onnx_export`` makes graphs, ``verify`` checks them against PyTorch through the streaming runtime, ``quantize``
makes and checks int8 models, ``inspect`` describes a file, ``pipeline`` is the whole ``export`` command as one
function. The contract the files carry is defined on the ground floor, ``wavexport.core.contract``.
Submodules import torch/onnx lazily where they can, so importing this package stays cheap.
"""
from ..core.errors import ExportError, VerificationError

__all__ = ["ExportError", "VerificationError"]
