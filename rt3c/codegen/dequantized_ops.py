"""Kernels that read int8 weights with a float32 scale per channel and dequantize them in registers.

An int8 model (rt3c.passes.quantize_weights) feeds dense linear layers and embedding lookups from
`DequantizeLinear(int8, scale)`. TVM's ONNX import would make that a kernel of its own writing the float
weight into memory; these kernels take the int8 tensor and the scale instead, so flash holds one byte per
weight and no float copy exists at run time.

- `dequantized_linear`: `y[i, j] = sum_k x[i, k] * (w[k, j] * scale[j]) (+ bias[j])`, one reduction block
  marked as a matmul (`op_pattern` 4), so `rt3c.codegen.schedules.schedule_matmul` register-blocks it like
  any dense layer: each loaded weight vector is converted and scaled once and feeds a row block of FMAs.
- `dequantized_gather`: `y[r, d] = table[ids[r], d] * scale[ids[r]]` (ids are bounded by the runtime).
"""

from __future__ import annotations

import tvm
from tvm import te

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
    """ids [rows] (`index_dtype`), table int8 [vocabulary, dim], scale [vocabulary], y [rows, dim]."""
    ids = te.placeholder((rows,), index_dtype, name="ids")
    table = te.placeholder((vocabulary, dim), "int8", name="table")
    scale = te.placeholder((vocabulary,), "float32", name="scale")
    y = te.compute((rows, dim), lambda r, d: table[ids[r], d].astype("float32") * scale[ids[r]], name="rows")
    return te.create_prim_func([ids, table, scale, y]).with_attr("global_symbol", name)
