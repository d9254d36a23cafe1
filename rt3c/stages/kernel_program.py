"""A `Program` of bare linear-layer kernels, no model around them: how tests and benchmarks run single
kernels on a target through the generated C project (`rt3c.stages.build.build_project`, `run_level`).

Each step is one layer: `y = kernel(x, constants...)`, one kernel per level, reading activations of the
layer's input width (one program input per distinct width) and writing its own output. Constants (weights,
sparse index arrays, bias) are shared by the step's levels, as an encoded model's are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from onnx import helper

from rt3c.codegen.onnx_ops import TensorInfo, lower_node
from rt3c.codegen.sparse_kernel import kernel_arguments, sparse_linear_kernel
from rt3c.codegen.targets import Target
from rt3c.codegen.tvm_build import workspace_bytes
from rt3c.core.sparse_format import EncodedLayer
from rt3c.runtime_c.program import Call, Program, Tensor
from rt3c.stages.lower import CompiledProgram


@dataclass
class LinearStep:
    output: str
    """The output tensor's name (a program output)."""
    in_features: int
    out_features: int
    constants: list[np.ndarray]
    """The kernel arguments between x and y, in kernel order."""
    kernels: list[tuple[str, tvm.tirx.PrimFunc]]
    """(symbol, function) per level."""


def sparse_linear_step(
    output: str, layer: EncodedLayer, bias: np.ndarray | None, tokens: int, target: Target
) -> LinearStep:
    """The SparseLinear kernels of every level of `layer` (symbols `<output>_L<level>`)."""
    if not layer.nested:
        raise ValueError(f"{layer.name}: levels with buffers of their own need a constant per level")
    kernels = []
    for level in range(len(layer.levels)):
        symbol = f"{output}_L{level}"
        kernels.append((symbol, sparse_linear_kernel(symbol, layer, level, tokens, target)))
    out_features, in_features = layer.shape
    return LinearStep(output, in_features, out_features, kernel_arguments(layer, 0, bias), kernels)


def dense_linear_step(output: str, weight: np.ndarray, tokens: int, levels: int = 1) -> LinearStep:
    """The dense kernel rt3c uses for layers left dense (TVM's MatMul, scheduled when built), no bias.

    `weight` is torch `[out, in]`; the kernel reads it as ONNX stores it, `[in, out]`.
    """
    out_features, in_features = weight.shape
    infos = {
        "x": TensorInfo((tokens, in_features), "float32"),
        "w": TensorInfo((in_features, out_features), "float32"),
        "y": TensorInfo((tokens, out_features), "float32"),
    }
    w_in_out = np.ascontiguousarray(weight.T)
    lowered = lower_node(helper.make_node("MatMul", ["x", "w"], ["y"]), output, infos, {"w": w_in_out}, 18)
    ((symbol, arguments, _),) = lowered.calls
    assert arguments == ("x", "w", "y"), arguments
    return LinearStep(
        output, in_features, out_features, [w_in_out], [(symbol, lowered.functions[symbol])] * levels
    )


def input_name(in_features: int) -> str:
    return f"x{in_features}"


def linear_program(
    name: str, levels: list[str], tokens: int, steps: list[LinearStep], target: Target
) -> CompiledProgram:
    """The program running `steps` in order on `tokens` rows for `target`; inputs `x<in_features>`, by width."""
    tensors: dict[str, Tensor] = {}
    for in_features in sorted({step.in_features for step in steps}):
        tensors[input_name(in_features)] = Tensor(
            input_name(in_features), (tokens, in_features), "float32", "input"
        )
    program = Program(name, levels, [None] * len(levels), tensors, list(tensors), [], [])
    functions: dict[str, tvm.tirx.PrimFunc] = {}
    for step in steps:
        if len(step.kernels) != len(levels):
            raise ValueError(f"{step.output}: {len(step.kernels)} kernels for {len(levels)} levels")
        tensors[step.output] = Tensor(step.output, (tokens, step.out_features), "float32", "output")
        program.outputs.append(step.output)
        arguments = []
        for position, array in enumerate(step.constants):
            arguments.append(f"{step.output}.arg{position}")
            tensors[arguments[-1]] = Tensor(arguments[-1], array.shape, str(array.dtype), "constant", array)
        calls = []
        for symbol, function in step.kernels:
            functions[symbol] = function
            calls.append(Call(symbol, (input_name(step.in_features), *arguments, step.output)))
        program.add_step(calls, (step.output,))
    program.workspace_bytes = max(
        (workspace_bytes(function, target) for function in functions.values()), default=0
    )
    return CompiledProgram(program, functions)
