"""Streaming inference: exported models through ONNX Runtime, checkpoints through PyTorch, same interface.

Below the exporters: it reads the contract (core), rebuilds checkpoints and tasks, and never imports the exporters,
training, plot or the CLI.
"""
from ..core.errors import StreamError
from .session import StreamingSession, TorchStreamer, providers_for, streaming_session_options

__all__ = ["StreamError", "StreamingSession", "TorchStreamer", "providers_for", "streaming_session_options"]
