"""Streaming on-device runtime: capture, clip sampling, ONNX Runtime encoding, index, retrieval and QA.

This package never imports torch: it installs with the ``runtime`` extra only (numpy, onnxruntime, opencv,
tokenizers).
"""
