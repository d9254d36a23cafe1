"""onnxruntime as the reference: export, encode and compile each check their output against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime


def reference_session(path: Path) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session that computes what the model says. Its QDQ fusion is off: it would turn an
    int8 weight's DequantizeLinear -> MatMul into a MatMulIntegerToFloat that also quantizes the activations
    at run time (rt3-lm's dense int8 decoder: every logit 0.02-0.03 off), which no build of ours does."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run an ONNX file on onnxruntime's CPU provider (`reference_session`)."""
    return reference_session(path).run(None, feeds)
