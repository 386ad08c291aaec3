"""Distillation, quantization, ONNX/TensorRT export and model-package building (``compress`` extra)."""
