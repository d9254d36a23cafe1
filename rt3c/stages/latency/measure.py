"""Measuring compiled kernels: instructions counted under qemu, or processor time on the host."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tvm

from rt3c.codegen.targets import Target, get_target
from rt3c.codegen.tvm_build import build_kernels
from rt3c.core.plan import LayerPlan, Plan
from rt3c.core.progress import step
from rt3c.core.sparse_format import encode_layer
from rt3c.runtime_c.project import render_project
from rt3c.stages.build import build_project
from rt3c.stages.encode import encode_model
from rt3c.stages.instruction_count import count_instructions, kernel_functions
from rt3c.stages.kernel_program import linear_program, sparse_linear_step
from rt3c.stages.latency.cost_model import LatencyModel
from rt3c.stages.latency.units import SPARSE_PREFIX, KernelCost, ProgramCost
from rt3c.stages.lower import CompiledProgram, lower_model


def _calls_per_level(compiled: CompiledProgram) -> dict[str, list[int]]:
    program = compiled.program
    calls = {symbol: [0] * len(program.levels) for symbol in compiled.functions}
    for per_level in program.steps:
        for level, call in enumerate(per_level):
            calls[call.symbol][level] += 1
    return calls


def _zeros_for(compiled: CompiledProgram, name: str) -> np.ndarray:
    """A constant's data, or zeros for anything else: kernels do not branch on values, and zero indices
    are in range for every Gather."""
    tensor = compiled.program.tensors[name]
    return tensor.data if tensor.data is not None else np.zeros(tensor.shape, tensor.dtype)


def count_program(compiled: CompiledProgram, target: Target) -> dict[str, float]:
    """Executed instructions per call of every kernel, each level run once under qemu."""
    program = compiled.program
    calls = _calls_per_level(compiled)
    units: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rt3c-latency-") as tmp:
        directory = Path(tmp)
        render_project(program, directory)
        build_project(compiled, target, directory, sources_dir=directory)
        args = []
        for index, name in enumerate(program.inputs):
            (directory / f"i{index}.bin").write_bytes(_zeros_for(compiled, name).tobytes())
            args.append(f"i{index}.bin")
        args += [f"o{index}.bin" for index in range(len(program.outputs))]
        binary = Path("rt3_main")
        for level in range(len(program.levels)):
            todo = [symbol for symbol, per_level in calls.items() if per_level[level] and symbol not in units]
            if not todo:
                continue
            regions = {symbol: kernel_functions(directory / binary, target, symbol) for symbol in todo}
            counts = count_instructions(target, binary, [str(level), *args], regions, directory)
            for symbol in todo:
                units[symbol] = counts.regions[symbol] / calls[symbol][level]
    return units


def _processor_seconds(timer: Callable, arguments: list, calls: int) -> float:
    """Processor time per call of `timer` (a TVM time evaluator running `calls` calls plus one warm-up
    call in this thread)."""
    start = time.thread_time()
    timer(*arguments)
    return (time.thread_time() - start) / (calls + 1)


def time_program(compiled: CompiledProgram, repeat_seconds: float = 0.02) -> dict[str, float]:
    """Seconds per call of every kernel, built for the host and run with TVM's runtime on the arguments of
    its first call: the least of 5 runs of about `repeat_seconds` each.

    Processor time of this thread, not wall time: on a machine shared with other jobs, wall time counts
    the time the scheduler gives to them (measured: 5x the end-to-end processor time of a compiled
    bert-tiny at a load average of 9 on 2 cores). The generated program times itself the same way."""
    module = build_kernels(compiled.functions, get_target("host"))
    device = tvm.cpu()
    first_call = {}
    for per_level in compiled.program.steps:
        for call in per_level:
            first_call.setdefault(call.symbol, call)
    seconds = {}
    for symbol, call in first_call.items():
        arguments = [tvm.runtime.tensor(_zeros_for(compiled, name), device) for name in call.args]
        estimate = _processor_seconds(module.time_evaluator(symbol, device, number=10), arguments, 10)
        number = min(max(round(repeat_seconds / max(estimate, 1e-8)), 10), 1_000_000)
        timer = module.time_evaluator(symbol, device, number=number)
        seconds[symbol] = min(_processor_seconds(timer, arguments, number) for _ in range(5))
    return seconds


def measure_program(compiled: CompiledProgram, target: Target, source: str) -> ProgramCost:
    """The cost of every kernel of `compiled`, counted under qemu for `target` or timed on the host."""
    units = count_program(compiled, target) if source == "qemu" else time_program(compiled)
    calls = _calls_per_level(compiled)
    kernels = tuple(KernelCost(symbol, tuple(calls[symbol]), units[symbol]) for symbol in sorted(units))
    return ProgramCost(target.name, source, tuple(compiled.program.levels), kernels)


def measure_model(onnx_path: Path, plan: Plan, target: Target, source: str) -> ProgramCost:
    """Every kernel of the model compiled with `plan` (encoded and lowered as `rt3c compile` does), measured
    per call and level."""
    with tempfile.TemporaryDirectory(prefix="rt3c-measure-") as tmp:
        plan.save(Path(tmp) / "plan.json")
        encoded = encode_model(onnx_path, Path(tmp) / "plan.json", Path(tmp) / "model.rt3.onnx").path
        with step(f"lower the model with its {len(plan.levels)}-level plan for {target.name}"):
            compiled = lower_model(encoded, target)
        with step(f"measure its {len(compiled.functions)} kernels ({source})"):
            return measure_program(compiled, target, source)


def measure_plan(
    model: LatencyModel, layers: dict[str, LayerPlan], weights: dict[str, np.ndarray]
) -> ProgramCost:
    """The plan's SparseLinear kernels, built as the compiler builds them and measured, all levels."""
    target = get_target(model.target)
    n_levels = len(next(iter(layers.values())).levels)
    steps = [
        sparse_linear_step(
            f"{SPARSE_PREFIX}{index}", encode_layer(weights[name], layer), None, model.linear.tokens, target
        )
        for index, (name, layer) in enumerate(layers.items())
    ]
    compiled = linear_program("plan", [f"L{i}" for i in range(n_levels)], model.linear.tokens, steps, target)
    return measure_program(compiled, target, model.source)
