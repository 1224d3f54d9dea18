"""Streaming inference: exported models through ONNX Runtime, checkpoints through PyTorch, same interface."""
from .session import StreamError, StreamingSession, TorchStreamer, streaming_session_options

__all__ = ["StreamError", "StreamingSession", "TorchStreamer", "streaming_session_options"]
