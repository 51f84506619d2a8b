"""The protocol-neutral data plane: model repository, ORT sessions, batching, inference."""
