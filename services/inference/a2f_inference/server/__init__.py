"""The gRPC inference server: thin servicers, the model registry, metrics, configuration."""
