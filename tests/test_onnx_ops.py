"""Single ONNX nodes through `lower_node` (TVM's importer and rt3c's legalizations), built for the host and
run call by call, against onnxruntime: the ops that exports of the supported families hold (docs/KERNELS.md)
beyond the zoo's, in the forms they take there (broadcasting, any axis, constant attributes as inputs)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

from rt3c.codegen.onnx_ops import SUPPORTED_OPS, TensorInfo, lower_node
from rt3c.codegen.targets import get_target
from rt3c.codegen.tvm_build import build_kernels

RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 5, 5)).astype(np.float32)
POSITIVE = np.abs(X) + 0.5
IDS = np.array([[1, 1, 0, 1, 1, 0]], np.int64)


def _constant(value: float | list[int] | list[float], dtype: type = np.int64) -> np.ndarray:
    return np.array(value, dtype=dtype)


# op -> (attributes, non-constant inputs, constant inputs (None: an omitted optional input), opset)
CASES: dict[str, tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray | None], int]] = {
    "Trilu upper, k=1": ({"upper": 1}, {"x": X}, {"k": _constant(1)}, 18),
    "Trilu lower (causal mask)": ({"upper": 0}, {"x": X}, {}, 18),
    "Clip": ({}, {"x": X}, {"low": _constant(-0.5, np.float32), "high": _constant(0.5, np.float32)}, 18),
    "Exp": ({}, {"x": X}, {}, 18),
    "Log": ({}, {"x": POSITIVE}, {}, 18),
    "Abs": ({}, {"x": X}, {}, 18),
    "Sin": ({}, {"x": X}, {}, 18),
    "Cos": ({}, {"x": X}, {}, 18),
    "Floor": ({}, {"x": X}, {}, 18),
    "Ceil": ({}, {"x": X}, {}, 18),
    "Sign": ({}, {"x": X}, {}, 18),
    "Reciprocal": ({}, {"x": POSITIVE}, {}, 18),
    "Sqrt": ({}, {"x": POSITIVE}, {}, 18),
    "Pow (cube)": ({}, {"x": X}, {"e": _constant(3.0, np.float32)}, 18),
    "ReduceMax, axes input": ({"keepdims": 0}, {"x": X}, {"axes": _constant([1])}, 18),
    "ReduceMin, last axis kept": ({}, {"x": X}, {"axes": _constant([-1])}, 18),
    "ReduceMean, last axis (LayerNorm by hand)": ({}, {"x": X}, {"axes": _constant([-1])}, 18),
    "GreaterOrEqual, broadcast": ({}, {"x": X}, {"y": _constant([0.0], np.float32)}, 18),
    "LessOrEqual, broadcast": ({}, {"x": X}, {"y": _constant([0.0], np.float32)}, 18),
    "Softmax axis 1": ({"axis": 1}, {"x": X}, {}, 18),
    "Where, broadcast condition and scalar": (
        {},
        {"c": X[0, :1] > 0, "x": X[:, :1, :1]},
        {"y": _constant(-1e4, np.float32)},
        18,
    ),
    "Expand": ({}, {"x": X[:1, :, :1]}, {"shape": _constant([2, 5, 3])}, 18),
    "Gelu tanh form": ({"approximate": "tanh"}, {"x": X}, {}, 20),
    "Gelu": ({}, {"x": X}, {}, 20),
    "CumSum exclusive reverse": ({"exclusive": 1, "reverse": 1}, {"x": IDS}, {"axis": _constant(1)}, 18),
    "CumSum (RoBERTa positions)": ({}, {"x": IDS.astype(np.int32)}, {"axis": _constant(1)}, 18),
    "Cast to float": ({"to": TensorProto.FLOAT}, {"x": IDS}, {}, 18),
    "Squeeze": ({}, {"x": X[:1]}, {"axes": _constant([0])}, 18),
    "Unsqueeze": ({}, {"x": X}, {"axes": _constant([1])}, 18),
    "Slice with steps": (
        {},
        {"x": X},
        {"s": _constant([0, 4]), "e": _constant([5, 0]), "a": _constant([1, 2]), "p": _constant([2, -2])},
        18,
    ),
    "Concat": ({"axis": -1}, {"x": X, "y": X[..., :2]}, {}, 18),
}


def _op(case: str) -> str:
    return case.split()[0].rstrip(",")


def _model(case: str) -> tuple[onnx.ModelProto, onnx.NodeProto]:
    attributes, inputs, constants, opset = CASES[case]
    node = helper.make_node(_op(case), [*inputs, *constants], ["out"], name=case, **attributes)
    values = [
        helper.make_tensor_value_info(name, _elem(array), array.shape) for name, array in inputs.items()
    ]
    graph = helper.make_graph(
        [node],
        "one",
        values,
        [onnx.ValueInfoProto(name="out")],
        [numpy_helper.from_array(array, name) for name, array in constants.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), node


def _elem(array: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(array.dtype)


def _run_lowered(case: str, node: onnx.NodeProto, expected: np.ndarray) -> np.ndarray:
    """The node's kernel calls in order, each on the tensors the earlier ones wrote."""
    _, inputs, constants, opset = CASES[case]
    known = {**inputs, **constants, "out": expected}
    infos = {name: TensorInfo(array.shape, str(array.dtype)) for name, array in known.items()}
    lowered = lower_node(node, "t", infos, constants, opset)
    module = build_kernels(lowered.functions, get_target("host"))
    tensors = {**inputs, **constants, **lowered.constants}
    for symbol, arguments, written in lowered.calls:
        info = lowered.temporaries.get(written) or infos[written]
        tensors[written] = np.zeros(info.shape, info.dtype)
        arrays = [tvm.runtime.tensor(tensors[name]) for name in arguments]
        module[symbol](*arrays)
        tensors[written] = arrays[-1].numpy()
    return tensors["out"]


@pytest.mark.parametrize("case", list(CASES))
def test_op_matches_onnxruntime(case: str) -> None:
    assert _op(case) in SUPPORTED_OPS
    model, node = _model(case)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, CASES[case][1])
    got = _run_lowered(case, node, expected)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
