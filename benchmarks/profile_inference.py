"""Where a whole inference's executed instructions go on aarch64: per op class, dense and per sparse level.

    .venv/bin/python benchmarks/profile_inference.py [--model minilm-l6] [--tokens 16] [--layers REGEX] [--plan PLAN]
                                                       [--work DIR]

The model is exported at `--tokens`, compiled dense (no plan: one level) and with a one-shot plan of
sparsity 0.6 / 0.7 / 0.8 (4x4 tiles, 8 patterns, every linear layer but the output layer, or those
`--layers` matches) or with the levels of `--plan` (a search's plan.json, say), each with
`rt3c compile --target aarch64` (every level verified against onnxruntime). Each build's `rt3_main` runs
under qemu-aarch64 with rt3c's counting plugin, one region per kernel (`kernel_functions`), once with one
inference and once with 1 + REPEATS; the difference over REPEATS is one inference, so startup and file
I/O cancel out.

Each kernel is put in the class of the ONNX node it was lowered from (`lower` names kernels
`sparse_<node>_L<level>` and `op<node>_<op type>...`). Identical kernels are compiled once under the first
node's name; they are the same op on the same shapes, so (in these models) of the same class: a MatMul
with a constant weight and one of two activations never share a kernel here. "runtime" is what the
inference executed outside every kernel: the step loop, the argument checks, the input and output
copies. Sparse linear layers are the SparseLinear kernels; "dense linear" are MatMul/Gemm with a constant
weight (the layers the plan leaves dense, or every layer of the dense build).
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from rt3c.codegen.targets import get_target
from rt3c.core.onnx_io import deterministic_feeds, load_onnx
from rt3c.core.plan import Plan
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.export import export_model
from rt3c.stages.instruction_count import count_instructions, function_ranges, nm_tool
from rt3c.stages.lower import level_model
from rt3c.stages.models import load_model

SPARSITIES = (0.6, 0.7, 0.8)
PREFIX = "prof"
REPEATS = 2
TARGET = "aarch64"

CLASSES = (
    "sparse linear", "dense linear", "attention matmuls", "softmax", "layernorm", "gelu",
    "copies (reshape, transpose, ...)", "embedding (gather)", "elementwise (bias, residual, scale, mask)",
    "other", "runtime",
)  # fmt: skip
_COPY_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Split", "Expand",
             "Identity", "Cast", "Shape"}  # fmt: skip
_ELEMENTWISE_OPS = {"Add", "Sub", "Mul", "Div", "Where", "Sqrt", "Pow", "Neg"}
_KERNEL = re.compile(r"(?:sparse_(\d+)_L\d+$|op(\d+)_)")
"""The names `lower` gives kernels: sparse_<node>_L<level>, or op<node>_<op type> and TVM's function name."""


def node_class(node: onnx.NodeProto, initializers: set[str]) -> str:
    """The op class of one node of the level-0 graph."""
    if node.op_type == "SparseLinear":
        return "sparse linear"
    if node.op_type in ("MatMul", "Gemm"):
        return "dense linear" if any(name in initializers for name in node.input[1:]) else "attention matmuls"
    if node.op_type == "Softmax":
        return "softmax"
    if node.op_type == "LayerNormalization":
        return "layernorm"
    if node.op_type in ("Gelu", "Erf"):
        return "gelu"
    if node.op_type == "Gather":
        return "embedding (gather)"
    if node.op_type in _COPY_OPS:
        return "copies (reshape, transpose, ...)"
    if node.op_type in _ELEMENTWISE_OPS:
        return "elementwise (bias, residual, scale, mask)"
    return "other"


def kernel_classes(encoded: Path, binary: Path) -> dict[str, tuple[str, list[str]]]:
    """Every kernel in `binary` -> (its op class, its functions), from the node it was lowered from."""
    graph = level_model(load_onnx(encoded), 0).graph
    initializers = {tensor.name for tensor in graph.initializer}
    ranges = function_ranges(binary, nm_tool(get_target(TARGET)))
    kernels = {}
    for function in ranges:
        if not function.startswith("__tvm_ffi_") or function == "__tvm_ffi__library_ctx":
            continue
        symbol = function.removeprefix("__tvm_ffi_")
        match = _KERNEL.match(symbol)
        if match is None:
            raise SystemExit(f"{binary}: kernel {symbol} is named after no node")
        index = int(next(group for group in match.groups() if group is not None))
        functions = [name for name in (function, f"{symbol}_compute_") if name in ranges]
        kernels[symbol] = (node_class(graph.node[index], initializers), functions)
    return kernels


def profile(project: Path, encoded: Path, level: int) -> dict[str, int]:
    """Executed instructions per op class of one inference of `project` at `level`."""
    manifest = json.loads((project / "rt3c-build.json").read_text())
    # The inputs rt3c compile measures and verifies on (token ids in range, masks of ones).
    feeds = deterministic_feeds(level_model(load_onnx(encoded), level))
    files = []
    for index, tensor in enumerate(manifest["inputs"]):
        files.append(f"profile_in{index}.bin")
        (project / files[-1]).write_bytes(np.ascontiguousarray(feeds[tensor["name"]]).tobytes())
    files += [f"profile_out{i}.bin" for i in range(len(manifest["outputs"]))]
    kernels = kernel_classes(encoded, project / "rt3_main")
    regions = {symbol: functions for symbol, (_, functions) in kernels.items()}
    target = get_target(TARGET)
    args = [str(level), *files]
    once = count_instructions(target, Path("rt3_main"), args, regions, project)
    repeated = count_instructions(target, Path("rt3_main"), [*args, str(REPEATS)], regions, project)
    per_class: dict[str, int] = defaultdict(int)
    for symbol, (kind, _) in kernels.items():
        per_class[kind] += (repeated.regions[symbol] - once.regions[symbol]) // REPEATS
    total = (repeated.total - once.total) // REPEATS
    per_class["runtime"] = total - sum(per_class.values())
    return dict(per_class)


def build(
    model: str, tokens: int, layers: str | None, work: Path, given_plan: Path | None = None
) -> list[tuple[str, Path, Path, int]]:
    """Dense and sparse aarch64 projects of `model` under `work` (made once): (label, project, encoded
    model, level) per column of the table. `given_plan` (a plan of `model`, e.g. a search's) replaces the
    one-shot plan."""
    exported = work / "model.onnx"
    if not exported.is_file():
        export_model(load_model(model), exported, seq_len=tokens)
    dense = work / "dense"
    if not (dense / "rt3c-build.json").is_file():
        compile_model(exported, dense, target_name=TARGET, prefix=PREFIX)
    plan, encoded = work / "plan.json", work / "model.rt3.onnx"
    if given_plan is not None and not encoded.is_file():
        Plan.load(given_plan).save(plan)
    elif not encoded.is_file():
        plan_model(
            exported, plan, sparsities=list(SPARSITIES), tile=(4, 4), patterns=8, layers=layers,
            frequencies_khz=[1_400_000, 1_000_000, 800_000],
        )  # fmt: skip
    if not encoded.is_file():
        encode_model(exported, plan, encoded)
    sparse = work / "sparse"
    if not (sparse / "rt3c-build.json").is_file():
        compile_model(encoded, sparse, target_name=TARGET, plan_path=plan, prefix=PREFIX)
    columns = [("dense", dense, exported, 0)]
    loaded = Plan.load(plan)
    sparsities = [loaded.sparsity(level) for level in range(len(loaded.levels))]
    columns += [(f"s={s:.3g}", sparse, encoded, level) for level, s in enumerate(sparsities)]
    return columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--layers", help="regex of the layers to plan (default: all but the output layer)")
    parser.add_argument(
        "--work", type=Path, help="keep exports and projects here (default: a temporary folder)"
    )
    parser.add_argument("--plan", type=Path, help="profile this plan's levels instead of a one-shot plan")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="profile-inference-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        columns = build(args.model, args.tokens, args.layers, work, args.plan)
        profiles = [profile(project, encoded, level) for _, project, encoded, level in columns]
    labels = [label for label, *_ in columns]
    table = Table(
        "op class", *labels, *(f"{label} / dense total" for label in labels[1:]),
        title=f"{args.model}, {args.tokens} tokens, aarch64: executed instructions per inference",
    )  # fmt: skip
    dense_total = sum(profiles[0].values())

    def row(name: str, counts: list[int]) -> None:
        table.add_row(
            name, *(f"{count:,}" for count in counts), *(f"{c / dense_total:.3f}" for c in counts[1:])
        )

    for kind in CLASSES:
        if any(profile.get(kind) for profile in profiles):
            row(kind, [profile.get(kind, 0) for profile in profiles])
    not_linear = [
        sum(c for k, c in p.items() if k not in ("sparse linear", "dense linear")) for p in profiles
    ]
    row("all but linear layers", not_linear)
    row("total", [sum(profile.values()) for profile in profiles])
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
