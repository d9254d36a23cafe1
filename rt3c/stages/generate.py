"""Stage: a lowered program -> the C project for one target, generated but not built (`rt3c.generate`).

No C compiler and no emulator: the sources, weights and example main come from the templates
(`rt3c.runtime_c.project`), the kernels from TVM's own code generator (an LLVM object file, or C source for a
Cortex-M target), the Makefile and CMakeLists.txt (and a board's linker script) from
`rt3c.runtime_c.build_files`, and `rt3c-build.json` records what `rt3c run` needs. `make` in the folder
builds it; `rt3c.stages.compile` does that, then verifies and measures every level.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rt3c.codegen.kernel_cache import write_kernels
from rt3c.codegen.targets import Target
from rt3c.runtime_c.build_files import render_build_files
from rt3c.runtime_c.program import Program, Tensor
from rt3c.runtime_c.project import render_project
from rt3c.stages.lower import CompiledProgram

MANIFEST = "rt3c-build.json"


@dataclass(frozen=True)
class GeneratedProject:
    """A generated C project: its folder and the memory its header declares."""

    directory: Path
    arena_bytes: int
    """Bytes of the activation arena (the header's `PREFIX_ARENA_BYTES` adds the kernels' scratch)."""
    arena_lower_bound: int
    """The largest sum of tensors alive at once: no arena plan can be smaller."""
    weight_bytes: int
    """Bytes of the constants, as the library lays them out in flash."""
    memory_bytes: int
    """Arena plus scratch: the RAM buffer the caller passes in."""


def generate(
    compiled: CompiledProgram, target: Target, directory: Path, *, check_board_memory: bool = True
) -> GeneratedProject:
    """Write the C project of `compiled` for `target` into `directory`, ready for `make`. A qemu board's
    memory bounds the weights only with `check_board_memory` (the board runs the project; a real part may
    have more)."""
    info = render_project(compiled.program, directory)
    write_build_inputs(compiled, target, directory, directory, check_board_memory=check_board_memory)
    arena = info["arena"]
    return GeneratedProject(
        directory,
        arena.size,  # type: ignore[attr-defined]
        arena.lower_bound,  # type: ignore[attr-defined]
        int(info["weight_bytes"]),  # type: ignore[call-overload]
        int(info["memory_bytes"]),  # type: ignore[call-overload]
    )


def write_build_inputs(
    compiled: CompiledProgram,
    target: Target,
    build_dir: Path,
    sources_dir: Path,
    *,
    check_board_memory: bool = True,
) -> str:
    """The kernels of `compiled` for `target` (from the kernel cache, else compiled by TVM) and the build
    files that make `sources_dir`'s project in `build_dir`; returns the kernel file's name."""
    build_dir.mkdir(exist_ok=True)
    kernel_file = "kernels.o" if target.kernel_output == "object" else "kernels.c"
    write_kernels(compiled.functions, target, build_dir / kernel_file)
    render_build_files(
        compiled.program,
        build_dir,
        target,
        kernel_file,
        sources_dir=sources_dir,
        check_board_memory=check_board_memory,
    )
    return kernel_file


def write_manifest(
    program: Program, target: Target, project: GeneratedProject, verified: bool, diffs: list[float]
) -> None:
    """`rt3c-build.json`: the target, the program's levels and tensors, and what was verified (docs/RUNTIME.md)."""
    manifest = {
        "target": target.name,
        "cflags": list(target.cflags),
        "prefix": program.prefix,
        "weights_format": program.weights_format,
        "levels": program.levels,
        "inputs": [
            {**_tensor_json(program.tensors[name]), "index_limit": program.index_limits.get(name)}
            for name in program.inputs
        ],
        "outputs": [_tensor_json(program.tensors[name]) for name in program.outputs],
        "verified": verified,
        "max_abs_diff": diffs,
        "arena_bytes": project.arena_bytes,
        "arena_lower_bound": project.arena_lower_bound,
        "weight_bytes": project.weight_bytes,
        "workspace_bytes": program.workspace_bytes,
        "memory_bytes": project.memory_bytes,
        "tokenizer": None if program.tokenizer is None else program.tokenizer.manifest(),
    }
    (project.directory / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _tensor_json(tensor: Tensor) -> dict[str, object]:
    return {"name": tensor.name, "shape": list(tensor.shape), "dtype": tensor.dtype}
