"""Test accuracy of a pruned model at every level with float32 and with int8 weights (`--weights int8`).

    .venv/bin/python benchmarks/eval_int8_accuracy.py PRUNE_DIR --out DIR [--seq-len 64] [--vocab DATA] [--c]

PRUNE_DIR is the output of `rt3c prune` on rotten-tomatoes (its checkpoint and plan). The checkpoint is
exported at `--seq-len` tokens, encoded twice with the plan (float32 and int8 weights, all levels), and
each encoded model is run with onnxruntime on the test split at every level. onnxruntime on the encoded
model is what `rt3c compile` verifies the C build against (to ~1e-8 on minilm-l6), so these are the C
build's accuracies too. `--vocab DATA` encodes the int8 model with the vocabulary trimmed to DATA's
training split (`rt3c encode --vocab`). `--c` also compiles the int8 model for the host (the same C as
any target's, TVM's kernels aside) and runs every test row through its example program at every level:
the C build's own accuracy, not onnxruntime's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from rt3c.core.plan import Plan
from rt3c.passes.encode import LEVEL_INPUT
from rt3c.stages.compile import compile_model
from rt3c.stages.datasets import load_dataset
from rt3c.stages.encode import encode_model
from rt3c.stages.export import export_model
from rt3c.stages.models import load_model
from rt3c.stages.reference import reference_session
from rt3c.stages.run import run_project


def accuracy(model: Path, level: int, inputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Share of the rows whose argmax of the logits is the label, one row per run (batch 1 is exported)."""
    session = reference_session(model)
    names = [value.name for value in session.get_inputs() if value.name != LEVEL_INPUT]
    correct = 0
    for row, label in enumerate(labels):
        feeds = {name: array[row : row + 1] for name, array in zip(names, inputs, strict=True)}
        (logits,) = session.run(None, {**feeds, LEVEL_INPUT: np.array(level, dtype=np.int64)})
        correct += int(np.argmax(logits) == label)
    return correct / len(labels)


def c_accuracy(project: Path, level: int, inputs: list[np.ndarray], labels: np.ndarray) -> float:
    """`accuracy` of a compiled host project: one run of its example program per row."""
    correct = 0
    for row, label in enumerate(labels):
        (logits,) = run_project(project, level, [array[row : row + 1] for array in inputs]).values()
        correct += int(np.argmax(logits) == label)
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prune_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--vocab", help="trim the int8 model's vocabulary to this data set's training split")
    parser.add_argument("--c", action="store_true", help="also the C host build of the int8 model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(str(args.prune_dir / "checkpoint"))
    exported = export_model(model, args.out / "model.onnx", seq_len=args.seq_len).onnx_path
    plan_path = args.prune_dir / "plan.json"
    encoded = {
        weights: encode_model(
            exported, plan_path, args.out / f"{weights}.rt3.onnx", weights=weights, vocab=vocab
        ).path
        for weights, vocab in (("float32", None), ("int8", args.vocab))
    }
    test = load_dataset("rotten-tomatoes", model, max_len=args.seq_len).test
    inputs = [tensor.numpy() for tensor in test.inputs]
    labels = test.targets.numpy()
    plan = Plan.load(plan_path)
    int8 = "int8" + (f" --vocab {args.vocab}" if args.vocab else "")
    columns = ["level", "sparsity", "float32 accuracy", f"{int8} accuracy", "int8 - float32 (points)"]
    project = None
    if args.c:
        project = args.out / "c-int8"
        compile_model(encoded["int8"], project, plan_path=plan_path)  # the plan's levels' frequencies
        columns += [f"{int8} accuracy, C host build", "C - onnxruntime (points)"]
    table = Table(*columns)
    for level, name in enumerate(level.name for level in plan.levels):
        scores = {weights: accuracy(path, level, inputs, labels) for weights, path in encoded.items()}
        row = [
            name,
            f"{plan.sparsity(level):.3f}",
            f"{100 * scores['float32']:.2f}",
            f"{100 * scores['int8']:.2f}",
            f"{100 * (scores['int8'] - scores['float32']):+.2f}",
        ]
        if project is not None:
            in_c = c_accuracy(project, level, inputs, labels)
            row += [f"{100 * in_c:.2f}", f"{100 * (in_c - scores['int8']):+.2f}"]
        table.add_row(*row)
    Console().print(f"{len(labels)} test rows, {args.seq_len} tokens")
    Console().print(table)


if __name__ == "__main__":
    main()
