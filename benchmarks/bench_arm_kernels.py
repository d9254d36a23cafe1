"""Executed instructions of one linear layer on ARM under qemu: rt3c's SparseLinear kernel vs the dense TVM kernel.

    .venv/bin/python benchmarks/bench_arm_kernels.py [--quick] [--target aarch64|cortex-m4] [--tile 4x4 --tile 1x8] [--int8]

For each shape (out x in), token count and sparsity s, a random weight is planned one-shot (4x4 tiles, 8
patterns, one level, as bench_kernels.py does) and each kernel computes Y = X W^T (+ b for the sparse
kernel) in the generated C project, built for the target and run under qemu (qemu-aarch64, or
qemu-system-arm -M mps2-an386 for the Cortex-M4) with rt3c's instruction-counting plugin. The count covers
the kernel's own functions (`rt3c.stages.instruction_count.kernel_functions`); every output is checked against
numpy first. "sparse/dense" is the ratio of executed instructions (goal on aarch64: <= 0.30 at s = 0.75);
"ideal" is 1 - s; "per kept MAC" is the sparse count over nonzeros x tokens, which compares tile shapes
(`--tile`, repeatable; default 4x4) at the same sparsity. Code bytes are the kernel functions' sizes (`nm -S`). The dense kernel is the one rt3c
uses for layers left dense: TVM's legalized MatMul with rt3c's register-blocked schedule.

On the Cortex-M4 each kernel is its own firmware (the board's memory would not hold a dense 3072x768
weight next to three sparse copies).

`--int8` compares instead the sparse kernel with int8 weights (`--weights int8`: int8 values, a float scale
per output channel, converted in registers) with the float32 one on the same plan, at 16 tokens and
s >= 0.75 (goal on aarch64: int8 <= float32), with their code bytes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rt3c.cli.options import parse_tile
from rt3c.codegen.targets import Target, get_target
from rt3c.core.plan import Level
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import one_shot_plan
from rt3c.runtime_c.project import render_project
from rt3c.stages.build import build_project
from rt3c.stages.instruction_count import count_instructions, function_ranges, kernel_functions, nm_tool
from rt3c.stages.kernel_program import LinearStep, dense_linear_step, linear_program, sparse_linear_step

SPARSITIES = (0.5, 0.75, 0.9)
TOLERANCE = 1e-3  # float32 sums over up to 3072 products in another order than numpy's


def measure_steps(
    steps: list[LinearStep], references: dict[str, tuple[np.ndarray, np.ndarray]], x: np.ndarray,
    target: Target, directory: Path,
) -> dict[str, tuple[int, int]]:  # fmt: skip
    """Build `steps` as one program, run it once counting instructions, check outputs; label -> (count, bytes)."""
    compiled = linear_program("bench", ["L0"], x.shape[0], steps, target)
    render_project(compiled.program, directory)
    build_project(compiled, target, directory, sources_dir=directory)
    (directory / "x.bin").write_bytes(x.tobytes())
    outputs = [f"{step.output}.bin" for step in steps]
    binary = Path("rt3_main")
    regions = {
        step.output: kernel_functions(directory / binary, target, step.kernels[0][0]) for step in steps
    }
    counts = count_instructions(target, binary, ["0", "x.bin", *outputs], regions, directory)
    ranges = function_ranges(directory / binary, nm_tool(target))
    measured = {}
    for step, output in zip(steps, outputs, strict=True):
        got = np.fromfile(directory / output, np.float32).reshape(x.shape[0], step.out_features)
        weight, bias = references[step.output]
        expected = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
        if not np.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
            raise SystemExit(
                f"{step.output} on {target.name}: differs from numpy by {np.abs(got - expected).max()}"
            )
        code_bytes = sum(end - start for start, end in (ranges[f] for f in regions[step.output]))
        measured[step.output] = (counts.regions[step.output], code_bytes)
    return measured


def _groups(steps: list[LinearStep], target: Target) -> list[list[LinearStep]]:
    """One program on Linux; one firmware per kernel on the board (memory)."""
    return [steps] if target.board is None else [[step] for step in steps]


def compare_int8(shapes: list[tuple[int, int]], target: Target) -> None:
    """Sparse kernel with int8 weights vs float32 on the same plan, 16 tokens, s >= 0.75."""
    rng = np.random.default_rng(0)
    table = Table(
        "out x in", "tokens", "s", "int8 insns", "float32 insns", "int8/float32", "int8 code B",
        "float32 code B", "int8 value B", "float32 value B", title=f"{target.name}: int8 vs float32 weights",
    )  # fmt: skip
    tokens = 16
    for n, k in shapes:
        w = rng.standard_normal((n, k)).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        x = rng.standard_normal((tokens, k)).astype(np.float32)
        for s in (0.75, 0.9):
            plan = one_shot_plan({"w": w}, [Level("L0")], [s], (4, 4), 8)
            steps, references, layers = [], {}, {}
            for weights in ("int8", "float32"):
                layer = encode_layer(w, plan.layers["w"], weights)
                step = sparse_linear_step(weights, layer, b, tokens, target)
                references[step.output] = (layer.dense_weight(0), b)
                steps.append(step)
                layers[weights] = layer
            measured = {}
            for group in _groups(steps, target):
                with tempfile.TemporaryDirectory(prefix="bench-arm-") as tmp:
                    measured.update(measure_steps(group, references, x, target, Path(tmp)))
            (int8, int8_bytes), (float32, float32_bytes) = measured["int8"], measured["float32"]
            table.add_row(
                f"{n}x{k}", str(tokens), f"{plan.sparsity(0):.2f}", f"{int8:,}", f"{float32:,}",
                f"{int8 / float32:.3f}", f"{int8_bytes:,}", f"{float32_bytes:,}",
                f"{layers['int8'].value_bytes():,}", f"{layers['float32'].value_bytes():,}",
            )  # fmt: skip
    Console(width=170).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="768x768 only, 16 tokens")
    parser.add_argument("--target", choices=["aarch64", "cortex-m4"], action="append", help="default: both")
    parser.add_argument("--tile", type=parse_tile, action="append", help="ROWSxCOLS (default: 4x4)")
    parser.add_argument("--int8", action="store_true", help="int8 vs float32 weights in the sparse kernel")
    args = parser.parse_args()
    tiles = args.tile or [(4, 4)]
    shapes = [(768, 768)] if args.quick else [(768, 768), (3072, 768), (768, 3072), (1536, 384)]
    tokens_list = [16] if args.quick else [1, 16]
    rng = np.random.default_rng(0)
    for target_name in args.target or ["aarch64", "cortex-m4"]:
        target = get_target(target_name)
        if args.int8:
            compare_int8(shapes, target)
            continue
        table = Table(
            "out x in", "tokens", "tile", "s", "sparse insns", "dense insns", "sparse/dense", "ideal",
            "per kept MAC", "sparse code B", "dense code B", title=f"{target_name} (qemu instruction counts)",
        )  # fmt: skip
        for n, k in shapes:
            w = rng.standard_normal((n, k)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            for tokens in tokens_list:
                x = rng.standard_normal((tokens, k)).astype(np.float32)
                dense = dense_linear_step("dense", w, tokens)
                references = {"dense": (w, np.zeros(n))}
                sparse = []
                for tile in tiles:
                    for s in SPARSITIES:
                        plan = one_shot_plan({"w": w}, [Level("L0")], [s], tile, 8)
                        layer = encode_layer(w, plan.layers["w"])
                        label = f"sparse{round(s * 100)}_{tile[0]}x{tile[1]}"
                        step = sparse_linear_step(label, layer, b, tokens, target)
                        references[step.output] = (layer.dense_weight(0), b)
                        nonzeros = int(np.count_nonzero(references[step.output][0]))
                        sparse.append((step, tile, plan.sparsity(0), nonzeros))
                steps = [dense, *(step for step, *_ in sparse)]
                measured = {}
                for group in _groups(steps, target):
                    with tempfile.TemporaryDirectory(prefix="bench-arm-") as tmp:
                        measured.update(measure_steps(group, references, x, target, Path(tmp)))
                dense_count, dense_bytes = measured["dense"]
                for step, tile, sparsity, nonzeros in sparse:
                    count, code_bytes = measured[step.output]
                    table.add_row(
                        f"{n}x{k}", str(tokens), f"{tile[0]}x{tile[1]}", f"{sparsity:.2f}", f"{count:,}",
                        f"{dense_count:,}", f"{count / dense_count:.3f}", f"{1 - sparsity:.2f}",
                        f"{count / (nonzeros * tokens):.3f}", f"{code_bytes:,}", f"{dense_bytes:,}",
                    )  # fmt: skip
        Console(width=150).print(table)


if __name__ == "__main__":
    main()
