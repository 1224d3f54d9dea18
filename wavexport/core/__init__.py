"""The ground floor: errors, file I/O and the ONNX contract. Imports nothing else from wavexport (only
``wavexport.__version__``), so every layer above may use it and a runtime can read a model with onnxruntime alone."""
