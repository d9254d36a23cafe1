"""A `Program` of bare linear-layer kernels, no model around them: how tests and benchmarks run single
kernels on a target through the generated C project (`rt3c.compile.build_project`, `run_level`).

Each step is one layer: `y = kernel(x, constants...)`, one kernel per level, reading activations of the
layer's input width (one program input per distinct width) and writing its own output. Constants (weights,
sparse index arrays, bias) are shared by the step's levels, as an encoded model's are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm

from rt3c.codegen.targets import workspace_bytes
from rt3c.compile import CompiledProgram
from rt3c.runtime_c.program import Call, Program, Tensor


@dataclass
class LinearStep:
    output: str
    """The output tensor's name (a program output)."""
    in_features: int
    out_features: int
    constants: list[np.ndarray]
    """The kernel arguments between x and y, in kernel order (e.g. `sparse_kernel.kernel_arguments`)."""
    kernels: list[tuple[str, tvm.tirx.PrimFunc]]
    """(symbol, function) per level."""


def input_name(in_features: int) -> str:
    return f"x{in_features}"


def linear_program(name: str, levels: list[str], tokens: int, steps: list[LinearStep]) -> CompiledProgram:
    """The program running `steps` in order on `tokens` rows; inputs `x<in_features>`, sorted by width."""
    tensors: dict[str, Tensor] = {}
    for in_features in sorted({step.in_features for step in steps}):
        tensors[input_name(in_features)] = Tensor(
            input_name(in_features), (tokens, in_features), "float32", "input"
        )
    program = Program(name, levels, [None] * len(levels), tensors, list(tensors), [], [])
    functions: dict[str, tvm.tirx.PrimFunc] = {}
    for step in steps:
        assert len(step.kernels) == len(levels), step.output
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
    program.workspace_bytes = max((workspace_bytes(function) for function in functions.values()), default=0)
    return CompiledProgram(program, functions)
