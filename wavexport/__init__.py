"""wavexport: train the Wave-RNN, export one recurrence step to ONNX, stream it."""
__version__ = "0.1.0"
