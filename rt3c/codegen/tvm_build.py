"""Compiling TIR kernels with TVM: one module of PrimFuncs with no runtime dependencies, and the scratch
(workspace) each kernel asks for."""

from __future__ import annotations

import re

import tvm

from rt3c.codegen.schedules import schedule_matmul
from rt3c.codegen.targets import Target

_EXTENT = re.compile(r"T\.int(?:32|64)\((\d+)\)|\b(\d+)\b")


_DTYPE = re.compile(r"^\s*,\s*\"(\w+)\"")


def _allocations(script: str) -> list[tuple[int, str]]:
    """(elements, dtype) of every `alloc_buffer((shape...), dtype?)` in TVMScript text."""
    found = []
    for line in script.splitlines():
        if "alloc_buffer((" not in line:
            continue
        rest = line.split("alloc_buffer((", 1)[1]
        depth, end = 1, 0
        while depth and end < len(rest):
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
        elements = 1
        for wrapped, bare in _EXTENT.findall(rest[: end - 1]):
            elements *= int(wrapped or bare)
        dtype = _DTYPE.match(rest[end:])
        found.append((elements, dtype.group(1) if dtype else "float32"))  # TVMScript omits the default dtype
    return found


def workspace_bytes(func: tvm.tirx.PrimFunc, target: Target) -> int:
    """An upper bound of the workspace a kernel asks for on `target`: all intermediate buffers of the
    function as `build_kernels` compiles it (matmuls scheduled, which adds their accumulator), each 64-aligned.

    TVM keeps small intermediates on the stack and asks `TVMBackendAllocWorkspace` for the others; the
    runtime serves them from a static scratch area sized by the largest bound over all kernels.
    """
    total = 0
    for elements, dtype in _allocations(schedule_matmul(func, target.vector_floats).script()):
        bits = 8 if dtype == "bool" else int(re.sub(r"\D", "", dtype) or 8)
        total += -(-(elements * bits // 8) // 64) * 64
    return total


def build_kernels(functions: dict[str, tvm.tirx.PrimFunc], target: Target) -> tvm.runtime.Module:
    """Compile PrimFuncs into one module with no runtime dependencies (asserts off), matmuls scheduled."""
    module = tvm.IRModule(
        {
            name: schedule_matmul(func.with_attr("global_symbol", name), target.vector_floats)
            for name, func in functions.items()
        }
    )
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        return tvm.compile(module, target=target.tvm_target).mod
