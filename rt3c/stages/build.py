"""Stage: build a rendered project for a target (kernels compiled, then make), run its example program, and
verify it level by level against onnxruntime on the encoded model of that level."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from rt3c.codegen.targets import Target
from rt3c.core.errors import VerificationError
from rt3c.core.onnx_io import deterministic_feeds
from rt3c.core.processes import run_process_group
from rt3c.runtime_c.program import Program, Tensor
from rt3c.runtime_c.project import MAIN_EXIT_INPUT_OUT_OF_RANGE, project_files
from rt3c.stages.generate import write_build_inputs
from rt3c.stages.lower import CompiledProgram, level_model
from rt3c.stages.reference import run_onnx

TOLERANCE = 1e-4


class InputOutOfRange(VerificationError):
    """rt3_main's rt3_invoke refused an index input outside its table (RT3_ERROR_INPUT_OUT_OF_RANGE)."""


def run_example(target: Target, binary: Path, args: list[str], cwd: Path) -> str:
    """Run a built example program of the project in `cwd` (natively or under qemu); its stdout."""
    command = target.command(str(binary) if target.board else str((cwd / binary).resolve()), args)
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise VerificationError(f"{binary} {' '.join(args)}: no answer within 600 s") from None
    if result.returncode == MAIN_EXIT_INPUT_OUT_OF_RANGE:
        raise InputOutOfRange(result.stderr.strip())
    if result.returncode != 0:
        raise VerificationError(
            f"{binary} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[:500]}"
        )
    return result.stdout


def run_level(
    project: Path, target: Target, level: int, inputs: list[np.ndarray], outputs: list[Tensor]
) -> list[np.ndarray]:
    """Run the built example program of `project` at `level` on `inputs` (in the program's input order)."""
    # Paths relative to the project: semihosting passes at most a short command line to bare metal.
    with tempfile.TemporaryDirectory(prefix="run-", dir=project) as tmp:
        tmp_path = Path(tmp).relative_to(project)
        args = [str(level)]
        for array in inputs:
            path = tmp_path / f"in{len(args)}.bin"
            (project / path).write_bytes(np.ascontiguousarray(array).tobytes())
            args.append(str(path))
        out_paths = [tmp_path / f"out{i}.bin" for i in range(len(outputs))]
        args.extend(str(p) for p in out_paths)
        run_example(target, Path("rt3_main"), args, project)
        out_paths = [project / p for p in out_paths]
        return [
            np.frombuffer(p.read_bytes(), dtype=t.dtype).reshape(t.shape)
            for p, t in zip(out_paths, outputs, strict=True)
        ]


def build_project(
    compiled: CompiledProgram, target: Target, build_dir: Path, sources_dir: Path, example: bool = True
) -> None:
    """Compile the kernels for `target` into `build_dir` and make the rendered project's library there,
    and with `example` its rt3_main and, with a tokenizer, rt3_tokenize (on a qemu board: for that board's
    memory)."""
    write_build_inputs(compiled, target, build_dir, sources_dir, check_board_memory=example)
    make_project(compiled.program, build_dir, example)


def make_project(program: Program, build_dir: Path, example: bool = True) -> None:
    """`make` in a generated project's `build_dir`: the library, and with `example` the example programs."""
    examples = ["rt3_main"] + (["rt3_tokenize"] if program.tokenizer is not None else [])
    _make(build_dir, *(examples if example else [project_files(program.prefix).library]))


def _make(build_dir: Path, *goals: str) -> None:
    result = run_process_group(["make", "-s", *goals], build_dir)
    if result.returncode != 0:
        raise VerificationError(
            f"building {build_dir} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )


def verify_project(encoded: ir.Model, build_dir: Path, target: Target, program: Program) -> list[float]:
    diffs = []
    for level in range(len(program.levels)):
        reference = level_model(encoded, level)
        feeds = deterministic_feeds(reference)
        with tempfile.TemporaryDirectory(prefix="rt3c-ref-") as tmp:
            path = Path(tmp) / "level.onnx"
            onnx.save(reference, path)
            expected = run_onnx(path, feeds)
        got = run_level(
            build_dir,
            target,
            level,
            [feeds[name] for name in program.inputs],
            [program.tensors[name] for name in program.outputs],
        )
        diff = max(float(np.max(np.abs(g - e))) for g, e in zip(got, expected, strict=True))
        if not diff <= TOLERANCE:
            raise VerificationError(f"level {level}: the C build differs from onnxruntime by {diff:.3g}")
        diffs.append(diff)
    return diffs
