"""Building ONNX model-repository entries from trained models (torch is only needed here)."""
