"""How well does a warm start train the search's sparse levels? (docs/SEARCH.md, "What brought the sparse
levels back")

    .venv/bin/python benchmarks/warm_start.py DIR [--densities 0.5,0.375,0.25] [--steps 300] [--lr 1e-4]
                                              [--ramp 1] [--validation-size 400]

DIR is an `rt3c search --out DIR` whose backbone stage has run (`DIR/stages/backbone.pt`). From the backbone's
weights and tiles, `--steps` of the joint stage (distillation 0.7 from the dense model, batch 32) on uniform
pattern sets (k = 8) at `--densities` of each kept tile, one level each; with `--ramp N` the densities are
reached in N equal stages (patterns refitted on the current weights each time). Printed after each stage: the
densities, each level's sparsity and validation accuracy with its own masks, and the dense model's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rt3c.core.plan import Level, Plan
from rt3c.stages.datasets import load_dataset
from rt3c.stages.models import load_model
from rt3c.stages.prune.stages import DenseRecipe, dense_baseline, joint_finetune, layer_masks, numpy_weights
from rt3c.stages.prune.training import Teacher, TrainSettings, evaluate
from rt3c.stages.search.evaluate import CandidatePlanner
from rt3c.stages.search.space import SearchSpace


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--densities", default="0.5,0.375,0.25")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--ramp", type=int, default=1)
    parser.add_argument("--validation-size", type=int, default=400)
    args = parser.parse_args()
    targets = [float(d) for d in args.densities.split(",")]

    backbone = torch.load(args.directory / "stages" / "backbone.pt", map_location="cpu", weights_only=False)
    search = backbone["settings"]
    model = load_model(search["dense"]["model"])
    data = load_dataset(search["dense"]["data"], model, search["dense"]["max_len"])
    dense_baseline(model, data, DenseRecipe(**search["dense"]))
    teacher = Teacher(model.module)
    index = torch.arange(min(args.validation_size, len(data.validation)))
    validation = type(data.validation)(
        tuple(t[index] for t in data.validation.inputs), data.validation.targets[index]
    )
    print(f"dense: {100 * evaluate(model, validation)['accuracy']:.2f} % on {len(index)} validation examples")
    model.module.load_state_dict(backbone["state"])
    tile = tuple(search["tile"])
    named = dict(model.module.named_parameters())
    parameters = {name: named[name] for name in search["layers"]}
    print("| stage | densities | sparsity | accuracy per level |\n|---|---|---|---|")
    for stage in range(1, args.ramp + 1):
        densities = [1 - (1 - d) * stage / args.ramp for d in targets]
        space = SearchSpace(
            tuple(parameters), len(targets), (8,), tuple(sorted(set(densities), reverse=True))
        )
        planner = CandidatePlanner(numpy_weights(parameters), tile, backbone["payload"], space)
        choices = []
        for _ in parameters:
            choices += [0, *(space.densities.index(d) for d in densities)]
        plan = Plan([Level(f"L{i}") for i in range(len(targets))], planner.layers(choices), model.name)
        settings = TrainSettings(
            args.steps // args.ramp, args.lr, 32, stage, warmup=0.1, length_buckets=True, distill=0.7
        )
        joint_finetune(model, data, plan, settings, teacher)
        accuracy = [
            evaluate(model, validation, layer_masks(plan.layers, level))["accuracy"]
            for level in range(len(targets))
        ]
        sparsity = [plan.sparsity(level) for level in range(len(targets))]
        print(
            f"| {stage} | {' / '.join(f'{d:.3g}' for d in densities)} | {' / '.join(f'{s:.3f}' for s in sparsity)}"
            f" | {' / '.join(f'{100 * a:.2f}' for a in accuracy)} |",
            flush=True,
        )
    print(json.dumps({"steps": args.steps, "lr": args.lr, "ramp": args.ramp, "densities": targets}))


if __name__ == "__main__":
    main()
