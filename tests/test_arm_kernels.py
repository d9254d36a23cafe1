"""ARM kernels under qemu: the instruction counter, and minilm-l6's SparseLinear kernels on aarch64 and Cortex-M4.

The kernels run through the generated C project (rt3c.runtime_c): a program whose steps are the kernels
of one layer per distinct shape, with one level per plan level, built and run as `rt3c compile` does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from rt3c.codegen.targets import Target, get_target
from rt3c.core.onnx_io import load_onnx
from rt3c.core.plan import Level
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import one_shot_plan
from rt3c.passes.linear_layers import find_linear_layers
from rt3c.runtime_c.build_files import render_build_files
from rt3c.runtime_c.program import Program
from rt3c.runtime_c.project import render_project
from rt3c.stages.build import build_project, run_level
from rt3c.stages.export import ExportResult
from rt3c.stages.instruction_count import count_instructions
from rt3c.stages.kernel_program import dense_linear_step, input_name, linear_program, sparse_linear_step
from rt3c.stages.lower import CompiledProgram

LOOP = r"""
#include <stdlib.h>
volatile int sink;
__attribute__((noinline)) void spin(int n) { for (int i = 0; i < n; ++i) sink += i; }
__attribute__((noinline)) void never_called(void) { sink = -1; }
int main(int argc, char **argv) {
  if (argc > 2) never_called();
  spin(atoi(argv[1]));
  return 0;
}
"""


def _build_loop(target: Target, directory: Path) -> Path:
    (directory / "loop.c").write_text(LOOP)
    command = [target.cc, *target.cflags, "-o", "loop", "loop.c"]
    if target.board is not None:
        # The startup file and linker script of a generated project (of no kernels) for the board.
        empty = Program("loop", ["L0"], [None], {}, [], [], [])
        render_project(empty, directory)
        render_build_files(empty, directory, target, "kernels.o", sources_dir=directory)
        command += ["startup.c", "-Tmps2.ld"]
    subprocess.run([*command, *target.ldflags], cwd=directory, check=True)
    return Path("loop")


@pytest.mark.parametrize("target_name", ["aarch64", "cortex-m4"])
def test_instruction_counts_scale_exactly_with_the_trip_count(target_name: str, tmp_path: Path) -> None:
    target = get_target(target_name)
    binary = _build_loop(target, tmp_path)
    regions = {"loop": ["spin"], "unused": ["never_called"]}
    # Trip counts of one digit count: atoi and everything else outside the loop run the same instructions.
    low, middle, high = (
        count_instructions(target, binary, [str(n)], regions, tmp_path) for n in (100, 200, 300)
    )
    per_100 = middle.regions["loop"] - low.regions["loop"]
    assert per_100 >= 300  # at least a load, an add and a store per iteration
    assert high.regions["loop"] - middle.regions["loop"] == per_100
    assert middle.total - low.total == high.total - middle.total == per_100
    assert 0 < low.regions["loop"] - per_100 < per_100 // 10  # entry and exit: fewer than 10 iterations
    assert low.regions["unused"] == 0


MINILM_SPARSITIES = [0.5, 0.7, 0.8]
MINILM_TOKENS = 16  # the exported sequence length: the activation rows rt3c compile gives these kernels


def _minilm_program(exported: ExportResult, target: Target, tokens: int) -> tuple[CompiledProgram, dict]:
    """One layer of each distinct shape (384x384, 1536x384, 384x1536), its kernels at every level."""
    found = find_linear_layers(load_onnx(exported.onnx_path), str(exported.onnx_path))
    chosen = {}
    for name, layer in found.items():
        shapes = [other.weight().shape for other in chosen.values()]
        if name.startswith("bert.encoder.") and layer.weight().shape not in shapes:
            chosen[name] = layer
    levels = [f"L{index}" for index in range(len(MINILM_SPARSITIES))]
    weights = {name: layer.weight() for name, layer in chosen.items()}
    plan = one_shot_plan(weights, [Level(level) for level in levels], MINILM_SPARSITIES, (4, 4), 8)
    steps, references = [], {}
    for index, (name, layer) in enumerate(chosen.items()):
        encoded = encode_layer(weights[name], plan.layers[name])
        assert encoded.nested  # every level reads a prefix of the same values: one copy in flash
        steps.append(sparse_linear_step(f"y{index}", encoded, layer.bias(), tokens, target))
        dense_weights = [encoded.dense_weight(level) for level in range(len(levels))]
        references[f"y{index}"] = (input_name(encoded.shape[1]), dense_weights, layer.bias())
    return linear_program("minilm_kernels", levels, tokens, steps, target), references


def _check_every_level(
    compiled: CompiledProgram, references: dict, target: Target, rng: np.random.Generator, directory: Path
) -> None:
    """Build the program for `target`, run every level on random inputs, compare each output with numpy
    (`references`: output -> (input name, dense weight per level, bias))."""
    program = compiled.program
    render_project(program, directory)
    build_project(compiled, target, directory, sources_dir=directory)
    inputs = {
        name: rng.standard_normal(program.tensors[name].shape).astype(np.float32) for name in program.inputs
    }
    for level in range(len(program.levels)):
        outputs = run_level(
            directory,
            target,
            level,
            list(inputs.values()),
            [program.tensors[name] for name in program.outputs],
        )
        for name, got in zip(program.outputs, outputs, strict=True):
            x, dense_weights, bias = references[name]
            expected = inputs[x].astype(np.float64) @ dense_weights[level].T.astype(np.float64) + bias
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"{name} level {level}")


@pytest.mark.slow
# One token on aarch64 is the GEMV template (sparse_gemv.py.j2); the C target keeps the token-block one.
@pytest.mark.parametrize(
    ("target_name", "tokens"), [("aarch64", MINILM_TOKENS), ("cortex-m4", MINILM_TOKENS), ("aarch64", 1)]
)
def test_minilm_layer_kernels_on_target_every_level(
    target_name: str, tokens: int, minilm_export: ExportResult, tmp_path: Path
) -> None:
    target = get_target(target_name)
    compiled, references = _minilm_program(minilm_export, target, tokens)
    _check_every_level(compiled, references, target, np.random.default_rng(4), tmp_path)


# One token (scalar multiply-adds where a tile keeps under 4 values), one token block, a zero-padded block.
@pytest.mark.parametrize("tokens", [1, 16, 21])
def test_row_segment_tile_kernels_on_aarch64_every_level(tokens: int, tmp_path: Path) -> None:
    """One-row tiles (1x8, 1x4) go two at a time through a chain's run on SIMD targets: runs of odd and
    even length, two sections of the value buffer, every level of a nested plan, under qemu-aarch64."""
    target = get_target("aarch64")
    rng = np.random.default_rng(tokens)
    sparsities = [0.5, 0.7, 0.8]
    levels = [f"L{index}" for index in range(len(sparsities))]
    steps, references = [], {}
    for index, (shape, tile) in enumerate([((24, 203), (1, 8)), ((17, 96), (1, 4))]):
        weight = rng.standard_normal(shape).astype(np.float32)
        bias = rng.standard_normal(shape[0]).astype(np.float32)
        plan = one_shot_plan({"w": weight}, [Level(level) for level in levels], sparsities, tile, 4)
        encoded = encode_layer(weight, plan.layers["w"])
        assert len(set(np.diff(encoded.tile_run_ptr.astype(int)) % 2)) == 2  # odd and even runs
        steps.append(sparse_linear_step(f"y{index}", encoded, bias, tokens, target))
        dense_weights = [encoded.dense_weight(level) for level in range(len(levels))]
        references[f"y{index}"] = (input_name(shape[1]), dense_weights, bias)
    compiled = linear_program("row_tiles", levels, tokens, steps, target)
    _check_every_level(compiled, references, target, rng, tmp_path)


def test_dense_kernel_on_cortex_m4(tmp_path: Path) -> None:
    """The scheduled dense kernel alone on the board: on the C target its accumulator is workspace."""
    target = get_target("cortex-m4")
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((24, 40)).astype(np.float32)
    x = rng.standard_normal((5, 40)).astype(np.float32)
    compiled = linear_program("dense", ["L0"], 5, [dense_linear_step("y", weight, 5)], target)
    render_project(compiled.program, tmp_path)
    build_project(compiled, target, tmp_path, sources_dir=tmp_path)
    (got,) = run_level(tmp_path, target, 0, [x], [compiled.program.tensors["y"]])
    np.testing.assert_allclose(got, x @ weight.T, rtol=1e-5, atol=1e-5)
