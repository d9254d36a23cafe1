"""Every standard ONNX op, lowered to TIR through TVM's own ONNX importer, one node at a time.

A node becomes a one-node ONNX model (its constant inputs as initializers, so shape-defining inputs
such as Reshape's are known), which `relax.frontend.onnx.from_onnx` imports with TVM's ONNX semantics;
`LegalizeOps`, `FuseOps` and `FuseTIR` turn it into PrimFuncs and a Relax `main` that calls them. That
main is read back as a short list of kernel calls over named tensors. The C runtime then needs no math
of its own, and a node TVM cannot import is a UserError naming the node.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import tvm
from onnx import helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx

from rt3c.core.errors import UserError
from rt3c.core.progress import quiet, quiet_native_stderr

SUPPORTED_OPS = frozenset(
    {
        "Abs", "Add", "And", "Cast", "Ceil", "Clip", "Concat", "Cos", "CumSum", "Div", "Equal", "Erf", "Exp",
        "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "Greater",
        "GreaterOrEqual", "IsNaN", "LayerNormalization", "Less", "LessOrEqual", "Log", "MatMul", "Max", "Min",
        "Mul", "Neg", "Not", "Or", "Pow", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum",
        "Relu", "Reshape", "Sigmoid", "Sign", "Sin", "Slice", "Softmax", "Sqrt", "Squeeze", "Sub", "Tanh",
        "Transpose", "Trilu", "Unsqueeze", "Where",
    }
)  # fmt: skip


@dataclass
class TensorInfo:
    shape: tuple[int, ...]
    dtype: str


@dataclass
class LoweredNode:
    functions: dict[str, tvm.tirx.PrimFunc] = field(default_factory=dict)
    calls: list[tuple[str, tuple[str, ...], str]] = field(default_factory=list)
    """(kernel symbol, argument tensor names inputs first, the tensor the call writes)."""
    temporaries: dict[str, TensorInfo] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)


def _value_info(name: str, info: TensorInfo) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(np.dtype(info.dtype)), list(info.shape)
    )


# Eigen's rational approximation of erf for float32 (also TVM's `topi.fast_erf`): odd numerator and even
# denominator polynomials in x, x clamped to [-4, 4]; max error ~1e-7, and plain arithmetic vectorises
# where libm's erff (TVM's default lowering) is a scalar call per element.
_ERF_NUMERATOR = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                  -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                  -1.60960333262415e-02)  # fmt: skip
_ERF_DENOMINATOR = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                    -7.37332916720468e-03, -1.42647390514189e-02)  # fmt: skip


def _fast_erf(x: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
    x = tvm.te.max(tvm.te.min(x, 4.0), -4.0)
    x2 = x * x
    numerator = tvm.tirx.const(_ERF_NUMERATOR[0], "float32")
    for coefficient in _ERF_NUMERATOR[1:]:
        numerator = numerator * x2 + coefficient
    denominator = tvm.tirx.const(_ERF_DENOMINATOR[0], "float32")
    for coefficient in _ERF_DENOMINATOR[1:]:
        denominator = denominator * x2 + coefficient
    return x * numerator / denominator


def _fast_gelu(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """GELU as one elementwise kernel, x * (1 + erf(x / sqrt 2)) / 2, with the fast erf."""

    def gelu(x: tvm.te.Tensor) -> tvm.te.Tensor:
        return tvm.te.compute(
            x.shape, lambda *i: x(*i) * (0.5 + 0.5 * _fast_erf(x(*i) * 0.7071067811865476)), name="gelu"
        )

    return builder.call_te(gelu, call.args[0])


def _cumsum(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    """Cumulative sum as a masked reduction, out[..., j, ...] = sum over k <= j (k < j if exclusive): TVM's
    own legalization is a scan under `T.parallel`, which under LLVM calls a thread pool the runtime does
    not have. Quadratic in the axis, which is short here (RoBERTa's positions: the sequence)."""
    attrs = call.attrs
    dtype = call.ty.dtype

    def cumsum(x: tvm.te.Tensor) -> tvm.te.Tensor:
        axis = int(attrs.axis) % len(x.shape)
        k = tvm.te.reduce_axis((0, x.shape[axis]), name="k")

        def element(*index: tvm.tirx.PrimExpr) -> tvm.tirx.PrimExpr:
            source = (*index[:axis], k, *index[axis + 1 :])
            included = k < index[axis] if attrs.exclusive else k <= index[axis]
            zero = tvm.tirx.const(0, dtype)
            return tvm.te.sum(tvm.tirx.Select(included, x(*source).astype(dtype), zero), axis=k)

        return tvm.te.compute(x.shape, element, name="cumsum")

    return builder.call_te(cumsum, call.args[0])


_LEGALIZATIONS = {"relax.nn.gelu": _fast_gelu, "relax.cumsum": _cumsum}

RELAX_LOWERING = tvm.transform.Sequential(
    [
        relax.transform.FastMathTransform(),
        relax.transform.LegalizeOps(_LEGALIZATIONS),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        # Again: FuseTIR's kernels (Gemm's matmul + bias) carry no pattern, and the matmul schedule reads it.
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.DeadCodeElimination(),
    ],
    name="rt3c.relax_lowering",
)
"""One node's Relax module -> PrimFuncs and a `main` that calls them: fast math, legalization to TIR (GELU
as `_fast_gelu`, CumSum as `_cumsum`), fusion into kernels (each annotated with its op pattern), and nothing
left that `main` does not call. Every pass here has opt_level 0 or 1, so the default PassContext (2) runs
them all."""


def lower_node(
    node: onnx.NodeProto,
    prefix: str,
    tensors: dict[str, TensorInfo],
    constants: dict[str, np.ndarray],
    opset: int,
) -> LoweredNode:
    """Kernels and calls computing `node`; kernel symbols start with `prefix`."""
    where = f"node {node.name or node.output[0]} ({node.op_type})"
    if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
        raise UserError(f"{where}: op is not supported by rt3c's code generator (supported: docs/KERNELS.md)")
    node, constants, transposed = _fold_weight_transpose(node, constants)
    inputs = [name for name in node.input if name]
    # Small integer constants (shapes, axes, starts) go in as Constant nodes, which the importer sees as
    # compile-time values: some converters (Expand) read only those, not initializers, as static.
    static = [
        name
        for name in dict.fromkeys(inputs)
        if name in constants and constants[name].dtype == np.int64 and constants[name].ndim <= 1
    ]
    initializers = [
        onnx.numpy_helper.from_array(constants[name], name)
        for name in inputs
        if name in constants and name not in static
    ]
    constant_nodes = [
        helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(constants[name], name))
        for name in static
    ]
    graph = helper.make_graph(
        [*constant_nodes, node],
        "one_node",
        [_value_info(name, tensors[name]) for name in inputs if name not in constants],
        [_value_info(name, tensors[name]) for name in node.output],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        with quiet(), quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the importer warns about every name it sanitises
            module = RELAX_LOWERING(from_onnx(model, opset=opset, keep_params_in_input=True))
    except Exception as exc:  # TVM raises TVMError, ValueError, ... for ops or attributes it cannot import
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(f"{where}: TVM cannot compile it ({first})") from None
    # from_onnx sanitises names; its parameters are the graph inputs, then the initializers, in order.
    parameter_names = [name for name in inputs if name not in constants] + [
        init.name for init in initializers
    ]
    lowered = _read_main(module, node, prefix, where, parameter_names)
    if transposed is not None:  # the transposed weight is a constant of this node's own, named as TVM's are
        name = f"{prefix}.const{len(lowered.constants)}"
        lowered.constants[name] = constants[transposed]
        _rename(lowered, transposed, name)
    return lowered


def _fold_weight_transpose(
    node: onnx.NodeProto, constants: dict[str, np.ndarray]
) -> tuple[onnx.NodeProto, dict[str, np.ndarray], str | None]:
    """Gemm(transB=1) with a constant B as Gemm(transB=0) with B transposed here, once, and the name of
    that transposed constant (None: `node` and `constants` as they were). TVM's import transposes B in a
    kernel of its own, at every inference (minilm-l6's pooler on aarch64: 0.32 M instructions of 0.84 M)."""
    attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type != "Gemm" or attributes.get("transB", 0) != 1 or node.input[1] not in constants:
        return node, constants, None
    name = f"{node.input[1]}_transposed"
    folded = helper.make_node(
        "Gemm", [node.input[0], name, *node.input[2:]], list(node.output), name=node.name,
        **{**attributes, "transB": 0},
    )  # fmt: skip
    return folded, {**constants, name: np.ascontiguousarray(constants[node.input[1]].T)}, name


def _read_main(
    module: tvm.IRModule, node: onnx.NodeProto, prefix: str, where: str, parameter_names: list[str]
) -> LoweredNode:
    main = module["main"]
    lowered = LoweredNode()
    if len(main.params) != len(parameter_names):
        raise UserError(
            f"{where}: TVM's import has {len(main.params)} parameters, expected {len(parameter_names)}"
        )
    names: dict[relax.Var, str] = dict(zip(main.params, parameter_names, strict=True))
    call_tir = tvm.ir.Op.get("relax.call_tir")
    body = main.body
    for block in body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Var) and value in names:  # an alias
                names[binding.var] = names[value]
                continue
            if not (isinstance(value, relax.Call) and value.op == call_tir):
                raise UserError(f"{where}: TVM lowered it to {type(value).__name__}, which rt3c cannot call")
            global_var, arguments = value.args[0], value.args[1]
            symbol = _identifier(f"{prefix}_{global_var.name_hint}")
            lowered.functions[symbol] = module[global_var].with_attr("global_symbol", symbol)
            argument_names = []
            for argument in arguments.fields:
                if isinstance(argument, tvm.ir.expr.Constant):
                    constant_name = f"{prefix}.const{len(lowered.constants)}"
                    lowered.constants[constant_name] = argument.value.numpy()
                    argument_names.append(constant_name)
                else:
                    argument_names.append(names[argument])
            output = f"{prefix}.t{len(lowered.temporaries)}"
            tensor_type = binding.var.ty
            shape = tuple(int(d) for d in tensor_type.shape.values)
            lowered.temporaries[output] = TensorInfo(shape, str(tensor_type.dtype))
            names[binding.var] = output
            lowered.calls.append((symbol, (*argument_names, output), output))
    result = names[body.body]
    if result in lowered.temporaries:  # the last call writes the node's output directly
        lowered.temporaries.pop(result)
        _rename(lowered, result, node.output[0])
    else:  # the node is an alias of one of its inputs (an Identity-like op): copy nothing, call nothing
        raise UserError(f"{where}: lowers to no computation; rt3c expects such nodes folded away")
    return lowered


def _rename(lowered: LoweredNode, old: str, new: str) -> None:
    lowered.calls = [
        (symbol, tuple(new if arg == old else arg for arg in args), new if out == old else out)
        for symbol, args, out in lowered.calls
    ]
