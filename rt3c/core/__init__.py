"""The contracts every other layer stands on: plan, encoded format, ONNX I/O, boards, errors, files.

Nothing here imports torch, TVM, jinja2 or onnxruntime (tests/test_layering.py checks).
"""
