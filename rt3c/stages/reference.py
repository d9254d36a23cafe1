"""onnxruntime as the reference: export, encode and compile each check their output against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file on onnxruntime's CPU provider."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
