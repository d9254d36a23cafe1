"""Validate the latency model on the host: predicted vs measured end-to-end latency per level.

    .venv/bin/python benchmarks/validate_latency.py DIR [--repeats 50]

DIR is an `rt3c search` output (model.onnx + plan.json). The model is compiled with the plan for the
host (`rt3c compile --target host`, verified against onnxruntime), and each level's inference is timed
end to end by the generated example program (`rt3_main LEVEL ... REPEATS`, processor time per inference);
the dense model is compiled and timed the same way. Two predictions of the same numbers, with the host
as the latency source (TVM-runtime wall time per kernel):

- "kernel sum": every kernel of this plan timed alone on its real shapes, summed over the level's calls
  (the plan's SparseLinear kernels plus the reference model's other kernels);
- "cost model": what `rt3c search` uses before compiling: the fitted SparseLinear cost model plus the
  other kernels.

The table gives each in ms and its error against the end-to-end time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rt3c.codegen.targets import get_target
from rt3c.core.onnx_io import load_onnx
from rt3c.core.plan import Plan
from rt3c.passes.linear_layers import find_linear_layers
from rt3c.stages.compile import compile_model
from rt3c.stages.latency.calibrate import build_latency_model
from rt3c.stages.latency.measure import measure_plan


def end_to_end_seconds(project: Path, level: int, repeats: int) -> float:
    """Processor time per inference of the compiled example program at `level` (zero inputs)."""
    manifest = json.loads((project / "rt3c-build.json").read_text())
    args = [str(level)]
    for index, spec in enumerate(manifest["inputs"]):
        (project / f"in{index}.bin").write_bytes(np.zeros(spec["shape"], spec["dtype"]).tobytes())
        args.append(f"in{index}.bin")
    args += [f"out{index}.bin" for index in range(len(manifest["outputs"]))]
    result = subprocess.run(
        ["./rt3_main", *args, str(repeats)], cwd=project, capture_output=True, text=True, check=True
    )
    microseconds = float(re.search(r"inferences: (\d+) us", result.stdout).group(1))
    return microseconds * 1e-6 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    onnx_path, plan = args.directory / "model.onnx", Plan.load(args.directory / "plan.json")
    linear = find_linear_layers(load_onnx(onnx_path), str(onnx_path))
    weights = {name: linear[name].weight() for name in plan.layers}
    layer = next(iter(plan.layers.values()))
    host = get_target("host")
    tokens = int(np.prod(load_onnx(onnx_path).graph.inputs[0].shape.numpy()))
    model, _ = build_latency_model(onnx_path, weights, layer.tile, tokens, host, "host")
    kernels = measure_plan(model, plan.layers, weights)
    with tempfile.TemporaryDirectory(prefix="validate-latency-") as tmp:
        sparse_project = compile_model(
            onnx_path, Path(tmp) / "plan", target_name="host", plan_path=args.directory / "plan.json"
        ).out_dir
        dense_project = compile_model(onnx_path, Path(tmp) / "dense", target_name="host").out_dir
        rows = [("dense", end_to_end_seconds(dense_project, 0, args.repeats), None, model.dense_units())]
        for level in range(len(plan.levels)):
            rows.append(
                (
                    plan.levels[level].name,
                    end_to_end_seconds(sparse_project, level, args.repeats),
                    model.other_units + kernels.level_units(level),
                    model.predict_units(plan.layers, level),
                )
            )
    table = Table(
        "level", "end-to-end ms", "kernel sum ms", "error", "cost model ms", "error",
        title=f"{args.directory}: host latency per level ({tokens} tokens, {args.repeats} repeats)",
    )  # fmt: skip
    for name, measured, kernel_sum, predicted in rows:
        table.add_row(
            name,
            f"{1e3 * measured:.3f}",
            "" if kernel_sum is None else f"{1e3 * kernel_sum:.3f}",
            "" if kernel_sum is None else f"{100 * (kernel_sum / measured - 1):+.1f}%",
            f"{1e3 * predicted:.3f}",
            f"{100 * (predicted / measured - 1):+.1f}%",
        )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
