"""Kernels that read int8 weights with a float32 scale per channel and dequantize them in registers.

An int8 model (rt3c.passes.quantize_weights) feeds dense linear layers and embedding lookups from
`DequantizeLinear(int8, scale)`. TVM's ONNX import would make that a kernel of its own writing the float
weight into memory; these kernels take the int8 tensor and the scale instead, so flash holds one byte per
weight and no float copy exists at run time.

- `dequantized_linear`: `y[i, j] = sum_k x[i, k] * (w[k, j] * scale[j]) (+ bias[j])`, one reduction block
  marked as a matmul (`op_pattern` 4), so `rt3c.codegen.schedules.schedule_matmul` register-blocks it like
  any dense layer: each loaded weight vector is converted and scaled once and feeds a row block of FMAs.
- `dequantized_gather`: `y[r, d] = table[ids[r], d] * scale[ids[r]]` (ids are bounded by the runtime, or
  clamped where computed; a negative one counts from the end).
- `dequantized_call`: which kernel, if any, a node of the model gets (`rt3c.stages.lower` asks it for each node).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import tvm
from tvm import te

from rt3c.codegen.onnx_ops import TensorInfo

MATMUL_PATTERN = 4
"""TVM's kOutEWiseFusable, which `schedule_matmul` looks for."""


def dequantized_linear(
    name: str, rows: int, in_features: int, out_features: int, weight_out_in: bool, bias: bool
) -> tvm.tirx.PrimFunc:
    """x [rows, in] float32, w int8 ([out, in] if `weight_out_in`, else [in, out]), scale [out], then bias
    [out] if `bias`, and y [rows, out]."""
    x = te.placeholder((rows, in_features), "float32", name="x")
    w_shape = (out_features, in_features) if weight_out_in else (in_features, out_features)
    w = te.placeholder(w_shape, "int8", name="w")
    scale = te.placeholder((out_features,), "float32", name="scale")
    k = te.reduce_axis((0, in_features), name="k")

    def weight(k: tvm.tirx.PrimExpr, j: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        return (w[j, k] if weight_out_in else w[k, j]).astype("float32") * scale[j]

    product = te.compute(
        (rows, out_features), lambda i, j: te.sum(x[i, k] * weight(k, j), axis=k), name="product"
    )
    if not bias:
        func = te.create_prim_func([x, w, scale, product]).with_attr("op_pattern", MATMUL_PATTERN)
        return func.with_attr("global_symbol", name)
    # A second block adds the bias, so the schedule leaves this kernel as it is: only Gemm nodes with a
    # bias (classifier heads, one row of a few outputs) take this form; exported Linear layers are
    # MatMul + Add, whose Add is a kernel of its own.
    b = te.placeholder((out_features,), "float32", name="bias")
    y = te.compute((rows, out_features), lambda i, j: product[i, j] + b[j], name="y")
    return te.create_prim_func([x, w, scale, b, y]).with_attr("global_symbol", name)


def dequantized_gather(
    name: str, rows: int, vocabulary: int, dim: int, index_dtype: str
) -> tvm.tirx.PrimFunc:
    """ids [rows] (`index_dtype`), table int8 [vocabulary, dim], scale [vocabulary], y [rows, dim].

    A negative id counts from the end, as ONNX's Gather says: ids from the model's inputs are checked by the
    runtime (negatives refused), but ids computed from them are only clamped to [-vocabulary, vocabulary)
    (`rt3c.stages.lower`), so a negative one must not index in front of the table."""
    ids = te.placeholder((rows,), index_dtype, name="ids")
    table = te.placeholder((vocabulary, dim), "int8", name="table")
    scale = te.placeholder((vocabulary,), "float32", name="scale")

    def row(r: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
        return te.if_then_else(ids[r] < 0, ids[r] + vocabulary, ids[r])

    y = te.compute((rows, dim), lambda r, d: table[row(r), d].astype("float32") * scale[row(r)], name="rows")
    return te.create_prim_func([ids, table, scale, y]).with_attr("global_symbol", name)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def dequantized_call(
    node: onnx.NodeProto,
    index: int,
    producers: dict[str, onnx.NodeProto],
    constants: set[str],
    values: dict[str, np.ndarray],
    infos: dict[str, TensorInfo],
) -> tuple[str, tvm.tirx.PrimFunc, list[str | np.ndarray]] | None:
    """A kernel that reads an int8 weight as it is, for a MatMul, Gemm or Gather whose weight is
    `DequantizeLinear(int8 constant, scale constant)` (rt3c.passes.quantize_weights): its symbol, its
    PrimFunc and its arguments before the output (tensor names, or constant arrays). None for any other
    node, which is lowered as usual (a dequantized weight it reads is then folded into a float constant)."""
    weight_input = {"MatMul": 1, "Gemm": 1, "Gather": 0}.get(node.op_type)
    if weight_input is None or node.domain not in ("", "ai.onnx") or len(node.input) <= weight_input:
        return None
    producer = producers.get(node.input[weight_input])
    if (
        producer is None
        or producer.op_type != "DequantizeLinear"
        or len(producer.input) != 2
        or not all(name in constants for name in producer.input)
    ):
        return None
    weight, scale = values[producer.input[0]], values[producer.input[1]]
    axis = int(_attributes(producer).get("axis", 1))
    if weight.dtype != np.int8 or weight.ndim != 2 or scale.shape != (weight.shape[axis],):
        return None
    attributes = _attributes(node)
    symbol = f"op{index}_dequantized_{node.op_type.lower()}"
    if node.op_type == "Gather":
        ids = node.input[1]
        if attributes.get("axis", 0) != 0 or axis != 0 or ids in constants:
            return None
        rows = int(np.prod(infos[ids].shape, dtype=np.int64))
        vocabulary, dim = weight.shape
        kernel = dequantized_gather(symbol, rows, vocabulary, dim, infos[ids].dtype)
        return symbol, kernel, [ids, weight, scale]
    x = node.input[0]
    if x in constants:
        return None
    out_in = bool(attributes.get("transB", 0)) if node.op_type == "Gemm" else False
    if node.op_type == "Gemm" and (
        attributes.get("transA", 0)
        or attributes.get("alpha", 1.0) != 1.0
        or attributes.get("beta", 1.0) != 1.0
    ):
        return None
    out_features, in_features = weight.shape if out_in else weight.shape[::-1]
    if axis != (0 if out_in else 1) or infos[x].shape[-1:] != (in_features,):
        return None
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    if bias is not None and (bias not in constants or values[bias].shape != (out_features,)):
        return None
    rows = int(np.prod(infos[x].shape[:-1], dtype=np.int64))
    kernel = dequantized_linear(symbol, rows, in_features, out_features, out_in, bias is not None)
    return symbol, kernel, [x, weight, scale, *([values[bias].astype(np.float32)] if bias else [])]
