"""Test accuracy of a pruned model at every level with float32 and with int8 weights (`--weights int8`).

    .venv/bin/python benchmarks/eval_int8_accuracy.py PRUNE_DIR --out DIR [--seq-len 64]

PRUNE_DIR is the output of `rt3c prune` on rotten-tomatoes (its checkpoint and plan). The checkpoint is
exported at `--seq-len` tokens, encoded twice with the plan (float32 and int8 weights, all levels), and
each encoded model is run with onnxruntime on the test split at every level. onnxruntime on the encoded
model is what `rt3c compile` verifies the C build against (to ~1e-8 on minilm-l6), so these are the C
build's accuracies too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime
from rich.console import Console
from rich.table import Table

from rt3c.core.plan import Plan
from rt3c.passes.encode import LEVEL_INPUT
from rt3c.stages.datasets import load_dataset
from rt3c.stages.encode import encode_model
from rt3c.stages.export import export_model
from rt3c.stages.models import load_model


def accuracy(model: Path, level: int, inputs: list[np.ndarray], labels: np.ndarray) -> float:
    """Share of the rows whose argmax of the logits is the label, one row per run (batch 1 is exported)."""
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs() if value.name != LEVEL_INPUT]
    correct = 0
    for row, label in enumerate(labels):
        feeds = {name: array[row : row + 1] for name, array in zip(names, inputs, strict=True)}
        (logits,) = session.run(None, {**feeds, LEVEL_INPUT: np.array(level, dtype=np.int64)})
        correct += int(np.argmax(logits) == label)
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prune_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(str(args.prune_dir / "checkpoint"))
    exported = export_model(model, args.out / "model.onnx", seq_len=args.seq_len).onnx_path
    plan_path = args.prune_dir / "plan.json"
    encoded = {
        weights: encode_model(exported, plan_path, args.out / f"{weights}.rt3.onnx", weights=weights).path
        for weights in ("float32", "int8")
    }
    test = load_dataset("rotten-tomatoes", model, max_len=args.seq_len).test
    inputs = [tensor.numpy() for tensor in test.inputs]
    labels = test.targets.numpy()
    plan = Plan.load(plan_path)
    table = Table("level", "sparsity", "float32 accuracy", "int8 accuracy", "int8 - float32 (points)")
    for level, name in enumerate(level.name for level in plan.levels):
        scores = {weights: accuracy(path, level, inputs, labels) for weights, path in encoded.items()}
        table.add_row(
            name,
            f"{plan.sparsity(level):.3f}",
            f"{100 * scores['float32']:.2f}",
            f"{100 * scores['int8']:.2f}",
            f"{100 * (scores['int8'] - scores['float32']):+.2f}",
        )
    Console().print(f"{len(labels)} test rows, {args.seq_len} tokens")
    Console().print(table)


if __name__ == "__main__":
    main()
