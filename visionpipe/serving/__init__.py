"""ONNX Runtime serving: one session per published iteration, batching, hot swap."""
