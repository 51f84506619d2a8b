"""Open Inference Protocol v2 wire formats: JSON tensors and the binary tensor extension."""
