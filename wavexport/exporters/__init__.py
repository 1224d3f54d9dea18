"""ONNX export of wavexport models: a step graph with explicit state I/O, or one Scan over a whole sequence.

``contract`` is the one definition of names and metadata (the streaming runtime imports it); ``onnx_export`` makes
graphs, ``verify`` checks them against PyTorch, ``quantize`` makes and checks int8 models, ``inspect`` describes
a file. Submodules import torch/onnx lazily where they can, so importing this package stays cheap.
"""
from .contract import (FORMAT_SEQUENCE, FORMAT_STEP, Contract, ContractError, read_contract, read_metadata)
from .errors import ExportError, VerificationError

__all__ = ["FORMAT_SEQUENCE", "FORMAT_STEP", "Contract", "ContractError", "read_contract", "read_metadata",
           "ExportError", "VerificationError"]
