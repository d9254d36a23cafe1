"""int8 activations with NEON sdot (aarch64 +dotprod) vs rt3c's float32 SparseLinear kernel, in executed instructions.

    .venv/bin/python benchmarks/dotprod/bench_dotprod.py [--quick] [--tokens 16 --tokens 1] [--no-tvm]

Issue 15, item 2: with per-token dynamic activation scales and the dot-product instructions, does a sparse
kernel execute fewer instructions than the float32 one? For each shape (out x in) and s, the weight, bias,
activations and one-shot plan (4x4 tiles, 8 patterns) are made exactly as `bench_arm_kernels.py --int8`
makes them (same seed and order, so the same plans), the kept weights are quantized with rt3c's own
`quantize_layer` (int8, a scale per output channel), and `sdot_sparse.c` (this directory) computes
Y = X W^T + b with:

- `a`: outputs in lanes, one sdot per tile per token (16 per tile at 16 tokens, whatever the pattern keeps);
- `b`: tokens in lanes, one sdot per non-empty tile row per 4 tokens, tiles grouped by row mask;
- at 1 token, layout a with one sdot per tile.

Every function of the measured region is named dp_* (per-token quantization of X, the sparse product,
dequantization with the bias); its count comes from rt3c's qemu plugin (`count_instructions`), and is
checked against the difference of the program's total with the same run minus the kernel call (mode 0).
The float32 column is rt3c's own SparseLinear kernel (TVM) on the same plan and tokens, counted as
`bench_arm_kernels.py` counts it (its `measure_steps`). Outputs are checked against numpy: `err int` is the
max abs difference from an exact emulation of the int8 arithmetic over max |y| (must be ~1e-7), `err float`
the same against float64 X W^T + b with the unquantized kept weights (the quantization error).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rt3c.codegen.targets import get_target
from rt3c.core.plan import LayerPlan, Level
from rt3c.core.sparse_format import encode_layer, quantize_layer
from rt3c.core.sparsify import one_shot_plan
from rt3c.stages.instruction_count import count_instructions, function_ranges, nm_tool
from rt3c.stages.kernel_program import sparse_linear_step

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "sdot_sparse.c"
CFLAGS = ("-O2", "-march=armv8.2-a+dotprod", "-std=c99", "-Wall", "-Wextra", "-Werror", "-static")
SHAPES = [(768, 768), (3072, 768), (768, 3072), (1536, 384)]
SPARSITIES = (0.75, 0.9)  # as bench_arm_kernels.py --int8; the plans come out at s = 0.77 and 0.90
BLOCK = 16


def load_bench_arm_kernels():
    """benchmarks/bench_arm_kernels.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_arm_kernels", HERE.parent / "bench_arm_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tile_layout(plan: LayerPlan, q: np.ndarray) -> dict[str, np.ndarray]:
    """Kept tiles of `plan` as sdot_sparse.c reads them, for layout a (column order) and b (row-mask runs)."""
    rows, cols = plan.tile
    grid_rows, grid_cols = plan.grid
    tiles = (
        q.reshape(grid_rows, rows, grid_cols, cols).transpose(0, 2, 1, 3).reshape(grid_rows, grid_cols, 16)
    )
    masks = plan.tile_masks(0).reshape(grid_rows, grid_cols, 16)
    kept = plan.kept_tiles
    out: dict[str, list] = {k: [] for k in ("a_col", "a_val", "b_col", "b_val", "run_mask", "run_end")}
    row_ptr, run_ptr = [0], [0]
    for r in range(grid_rows):
        columns = np.flatnonzero(kept[r])
        row_masks = masks[r, columns].reshape(-1, 4, 4).any(axis=2) @ (1 << np.arange(4))
        out["a_col"].extend(columns)
        out["a_val"].extend(tiles[r, columns])
        end = row_ptr[-1]
        for mask in np.unique(row_masks):  # runs by row mask, each in column order
            if mask == 0:
                raise SystemExit("a kept tile keeps no weight")
            members = columns[row_masks == mask]
            out["b_col"].extend(members)
            out["b_val"].extend(tiles[r, members])
            end += len(members)
            out["run_mask"].append(mask)
            out["run_end"].append(end)
        row_ptr.append(row_ptr[-1] + len(columns))
        run_ptr.append(len(out["run_mask"]))
    arrays = {k: np.asarray(v) for k, v in out.items()}
    arrays["row_ptr"], arrays["run_ptr"] = np.asarray(row_ptr), np.asarray(run_ptr)
    return arrays


def write_input(path: Path, x: np.ndarray, layout: dict[str, np.ndarray], which: str, scale, bias) -> None:
    n_tiles, runs = len(layout["a_col"]), len(layout["run_mask"])
    i32 = np.int32
    parts = [
        np.array([x.shape[0], len(scale), x.shape[1], n_tiles, runs], i32), x.astype(np.float32),
        layout["row_ptr"].astype(i32), layout[f"{which}_col"].astype(i32),
        layout[f"{which}_val"].astype(np.int8).reshape(-1), layout["run_ptr"].astype(i32),
        layout["run_mask"].astype(i32), layout["run_end"].astype(i32), scale.astype(np.float32),
        bias.astype(np.float32),
    ]  # fmt: skip
    path.write_bytes(b"".join(part.tobytes() for part in parts))


def emulate(x: np.ndarray, q: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in numpy: per-token int8 X (float32 scale ops as in C), int32 sums, dequant."""
    x = x.astype(np.float32)
    peak = np.abs(x).max(axis=1)
    inv = np.where(peak > 0, np.float32(127) / np.where(peak > 0, peak, 1), 0).astype(np.float32)
    sx = (peak / np.float32(127)).astype(np.float32)
    qx = np.clip(np.rint(x * inv[:, None]), -127, 127).astype(np.int64)
    acc = (qx @ q.astype(np.int64).T).astype(np.float64)
    return acc * (scale[None, :].astype(np.float64) * sx[:, None]) + bias


def build(directory: Path) -> Path:
    binary = directory / "sdot_sparse"
    command = ["nice", "-n", "19", "aarch64-linux-gnu-gcc", *CFLAGS, "-o", str(binary), str(SOURCE)]
    subprocess.run(command, check=True)
    return binary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="768x768 only")
    parser.add_argument("--tokens", type=int, action="append", help="1 or a multiple of 16 (default: 16, 1)")
    parser.add_argument("--no-tvm", action="store_true", help="skip rt3c's float32 kernel")
    args = parser.parse_args()
    shapes = SHAPES[:1] if args.quick else SHAPES
    tokens_list = args.tokens or [16, 1]
    target = get_target("aarch64")
    bench = None if args.no_tvm else load_bench_arm_kernels()
    table = Table(
        "out x in", "tokens", "s", "tiles", "rows/tile", "sdot a insns", "sdot b insns", "b: total-baseline",
        "quantize insns",
        "float32 insns", "a/f32", "b/f32", "a per tile·token", "b per tile·token", "err int", "err float",
        title="aarch64 (qemu-aarch64): int8-activation sdot kernel vs rt3c float32 SparseLinear",
    )  # fmt: skip
    rng = np.random.default_rng(0)  # the draws of bench_arm_kernels.compare_int8
    with tempfile.TemporaryDirectory(prefix="dotprod-", dir="/tmp") as tmp:
        work = Path(tmp)
        binary = build(work)
        ranges = function_ranges(binary, nm_tool(target))
        region = {"all": [f for f in ranges if f.startswith("dp_")]}
        regions = {**region, "linear": ["dp_linear"]}
        for n, k in shapes:
            w = rng.standard_normal((n, k)).astype(np.float32)
            b = rng.standard_normal(n).astype(np.float32)
            x16 = rng.standard_normal((16, k)).astype(np.float32)
            for s in SPARSITIES:
                plan = one_shot_plan({"w": w}, [Level("L0")], [s], (4, 4), 8)
                layer_plan = plan.layers["w"]
                quantized = quantize_layer(w, layer_plan)
                layout = tile_layout(layer_plan, quantized.values)
                n_tiles = len(layout["a_col"])
                masks = layer_plan.tile_masks(0)[layer_plan.kept_tiles]  # [tiles, 4 outputs, 4 inputs]
                rows_per_tile = float(masks.any(axis=2).sum(axis=1).mean())
                kept_weight = np.where(layer_plan.mask(0), w, 0).astype(np.float64)
                for tokens in tokens_list:
                    x = np.resize(x16, (tokens, k))  # its first rows
                    reference = x.astype(np.float64) @ kept_weight.T + b
                    exact = emulate(x, quantized.values, quantized.scale, b)
                    counts, delta, errors, quantize = {}, {}, [], 0
                    for which in ("a", "b") if tokens > 1 else ("a",):
                        write_input(work / "in.bin", x, layout, which, quantized.scale, b)
                        run = count_instructions(
                            target, Path(binary.name), [which, "in.bin", "y.bin"], regions, work
                        )
                        base = count_instructions(
                            target, Path(binary.name), ["0", "in.bin", "y0.bin"], regions, work
                        )
                        delta[which] = run.total - base.total
                        # The difference is main's call to dp_linear (its arguments, bl): a few instructions.
                        if not 0 <= delta[which] - run.regions["all"] < 32:
                            raise SystemExit(
                                f"{n}x{k} s={s} {which}: total - baseline {run.total - base.total:,} != "
                                f"dp_* region {run.regions['all']:,}"
                            )  # fmt: skip
                        y = np.fromfile(work / "y.bin", np.float32).reshape(tokens, n)
                        peak = np.abs(reference).max()
                        err_int = float(np.abs(y - exact).max() / peak)
                        if err_int > 1e-5:
                            raise SystemExit(
                                f"{n}x{k} s={s} {which}: differs from the int8 emulation: {err_int}"
                            )
                        errors.append((err_int, float(np.abs(y - reference).max() / peak)))
                        counts[which] = run.regions["all"]
                        quantize = run.regions["linear"]
                    float32 = None
                    if bench is not None:
                        layer = encode_layer(w, layer_plan, "float32")
                        step = sparse_linear_step("float32", layer, b, tokens, target)
                        references = {"float32": (layer.dense_weight(0), b)}
                        with tempfile.TemporaryDirectory(prefix="bench-arm-", dir="/tmp") as tvm_dir:
                            float32 = bench.measure_steps([step], references, x, target, Path(tvm_dir))[
                                "float32"
                            ][0]
                    a, bb = counts["a"], counts.get("b")
                    table.add_row(
                        f"{n}x{k}", str(tokens), f"{plan.sparsity(0):.2f}", f"{n_tiles:,}", f"{rows_per_tile:.2f}",
                        f"{a:,}", "-" if bb is None else f"{bb:,}", f"{delta.get('b', delta['a']):,}", f"{quantize:,}",
                        "-" if float32 is None else f"{float32:,}",
                        "-" if float32 is None else f"{a / float32:.3f}",
                        "-" if float32 is None or bb is None else f"{bb / float32:.3f}",
                        f"{a / (n_tiles * tokens):.2f}", "-" if bb is None else f"{bb / (n_tiles * tokens):.2f}",
                        f"{max(e[0] for e in errors):.1e}", f"{max(e[1] for e in errors):.1e}",
                    )  # fmt: skip
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
