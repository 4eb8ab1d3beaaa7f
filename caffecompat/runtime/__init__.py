"""ONNX Runtime: sessions, execution providers and the training API."""
