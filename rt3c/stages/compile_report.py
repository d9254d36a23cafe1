"""The measured part of `rt3c compile`: per level the built program's time (host) or executed instructions
(qemu), onnxruntime's time on the dense model, and the project's report.json and REPORT.md."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from rt3c.codegen.targets import Target
from rt3c.core.boards import Board
from rt3c.core.onnx_io import deterministic_feeds
from rt3c.core.progress import step
from rt3c.runtime_c.program import Program
from rt3c.runtime_c.report import (
    DenseReference,
    LevelReport,
    board_latencies,
    memory,
    onnxruntime_us,
    section_sizes,
    write_report,
)
from rt3c.runtime_c.stack import measure_stack
from rt3c.stages.encoded_model import EncodedModel
from rt3c.stages.inspect_model import inspect_encoded
from rt3c.stages.instruction_count import count_instructions
from rt3c.stages.lower import level_model

TIMED_REPEATS = 20
"""Inferences per level whose processor time is measured (host), after a first one."""


TIMED_RUNS = 3
"""Runs of TIMED_REPEATS inferences per level (host); the report takes the fastest."""


COUNTED_REPEATS = 2
"""Inferences per level whose instructions are counted (qemu), after a first one. Counts are exact, so
two suffice; the timing line `rt3_main` prints after repeats adds a few thousand (about 0.1 % of
bert-tiny's inference on Cortex-M4, less for larger models)."""


def timing_feeds(encoded: EncodedModel) -> dict[str, np.ndarray]:
    """The inputs every level of the build and onnxruntime's dense model are timed on."""
    return deterministic_feeds(level_model(encoded.model, 0))


def measure_levels(
    program: Program, feeds: dict[str, np.ndarray], build_dir: Path, target: Target
) -> list[float | int | None]:
    """Per level, processor µs per inference of a native build, or executed instructions per inference
    of a qemu target (the count with COUNTED_REPEATS more inferences minus the count without), on `feeds`
    (`timing_feeds`)."""
    costs: list[float | int | None] = []
    with tempfile.TemporaryDirectory(prefix="measure-", dir=build_dir) as tmp:
        directory = Path(tmp).relative_to(build_dir)
        files = []
        for index, name in enumerate(program.inputs):
            (build_dir / directory / f"i{index}").write_bytes(np.ascontiguousarray(feeds[name]).tobytes())
            files.append(str(directory / f"i{index}"))
        files += [str(directory / f"o{index}") for index in range(len(program.outputs))]
        for level in range(len(program.levels)):
            args = [str(level), *files]
            if target.board is None and not target.run_prefix:
                command = [str((build_dir / "rt3_main").resolve()), *args, str(TIMED_REPEATS)]
                runs = []
                for _ in range(TIMED_RUNS):
                    result = subprocess.run(
                        command, cwd=build_dir, capture_output=True, text=True, check=True
                    )
                    runs.append(float(result.stdout.split(":")[1].split()[0]))
                costs.append(min(runs) / TIMED_REPEATS)
            else:
                once = count_instructions(target, Path("rt3_main"), args, {}, build_dir).total
                repeated = count_instructions(
                    target, Path("rt3_main"), [*args, str(COUNTED_REPEATS)], {}, build_dir
                ).total
                costs.append(round((repeated - once) / COUNTED_REPEATS))
    return costs


def project_report(
    program: Program,
    encoded: EncodedModel,
    project: Path,
    target: Target,
    memory_bytes: int,
    diffs: list[float],
    costs: list[float | int | None],
    board: Board | None,
    host_speed: tuple[list[float | None], float | str],
) -> dict[str, object]:
    """report.json and REPORT.md in `project` (rt3c.runtime_c.report); `memory_bytes`: arena and scratch;
    `board`: the one of `--board`; `host_speed`: per level the host build's µs, and onnxruntime's µs on the
    dense model (or why none)."""
    host_us, dense_us = host_speed
    sections = section_sizes(project / f"{program.prefix}.o", target)
    tokenizer_bytes = 0
    if program.tokenizer is not None:  # its text and read-only data, inside the library's code sections
        tokenizer_sections = section_sizes(project / f"{program.prefix}_tokenizer.o", target)
        tokenizer_bytes = sum(
            size for name, size in tokenizer_sections.items() if name.startswith((".text", ".rodata"))
        )
    flash, ram = memory(program, sections, memory_bytes - program.workspace_bytes, tokenizer_bytes)
    sparsity = None
    if encoded.layers:
        totals = inspect_encoded(encoded.model, encoded.layers).level_totals()
        sparsity = [float(totals[level]["sparsity"]) for level in range(len(program.levels))]
    native = target.board is None and not target.run_prefix
    instructions = [None if native else cost for cost in costs]
    latencies, deadlines, no_latency = board_latencies(instructions, board, target)  # type: ignore[arg-type]
    levels = [
        LevelReport(
            name=name,
            frequency_khz=program.frequencies_khz[index],
            sparsity=None if sparsity is None else sparsity[index],
            max_abs_diff=diffs[index] if diffs else None,
            host_us=costs[index] if native else None,
            instructions=instructions[index],  # type: ignore[arg-type]
            latency_ms=latencies[index],
            deadline_ms=deadlines[index],
            speedup_vs_dense=None
            if isinstance(dense_us, str) or not host_us[index]
            else dense_us / host_us[index],  # type: ignore[operator]
        )
        for index, name in enumerate(program.levels)
    ]
    stack = measure_stack(project, program.prefix, target)
    return write_report(
        project,
        program,
        target,
        flash,
        ram,
        levels,
        verified=bool(diffs),
        board=board,
        no_latency=no_latency,
        stack=stack,
        dense=DenseReference(None, dense_us) if isinstance(dense_us, str) else DenseReference(dense_us),
    )


def dense_reference(source: EncodedModel, exported_with_plan: bool) -> Path | str:
    """The dense model behind what compile got, or why there is none: an exported model with its plan,
    or a dense model alone, is its own; an encoded model does not carry its dense source."""
    if exported_with_plan or not source.layers:
        return source.path
    return "no_dense_reference: compiled from an encoded model, whose dense source compile did not get"


def time_dense(dense: Path, feeds: dict[str, np.ndarray]) -> float | str:
    """µs per inference of onnxruntime on the dense model, one thread, on the inputs the C build is
    timed on (`timing_feeds`); or why it cannot run them."""
    with step("time onnxruntime on the dense model (1 thread)"):
        return onnxruntime_us(dense, feeds, TIMED_REPEATS, TIMED_RUNS)
