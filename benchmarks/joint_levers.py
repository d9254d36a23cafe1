"""How much do the joint stage's levers move the searched levels' test accuracy? (docs/SEARCH.md, "Levers
of the joint stage")

    .venv/bin/python benchmarks/joint_levers.py DIR [--steps 600] [--level-weights 0.2,0.3,0.5]
                                                [--seeds 0,1,2] [--lr 2e-4] [--densest 0.5]
                                                [--precision auto|float32|bfloat16] [--hidden-distill 1.0]

DIR is a finished `rt3c search --out DIR` (its `plan.json` and `stages/warm.pt`). For each seed, the joint
stage trains the plan's levels from the warm start again (distillation 0.7 from the dense model, batch 32,
the search's own settings otherwise), and each level's test accuracy is measured as `rt3c search` measures
it. Printed: one row per seed, then the mean and the spread (max - min) per level, against dense.

`--hidden-distill W` adds W times the hidden-state loss against the dense model (`hidden_state_loss`: the
relative squared error of every encoder layer's output) to each level's loss.

`--densest D` trains another plan: the search's winner with its densest level at D (a density of the search
space: the kept fraction of each kept tile) in every layer where it was sparser, its other levels as they were, the pattern sets
fitted as the search fits a candidate's. Printed with it: each plan's sparsity per level and its battery
ratio along the board's trace from the run's latency model (predicted, not compiled), beside the winner's
measured one, which prices the accuracy of a denser top level in battery life.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from rt3c.core.battery import simulate
from rt3c.core.boards import load_board
from rt3c.core.plan import Plan
from rt3c.stages.datasets import load_dataset
from rt3c.stages.latency.cost_model import LatencyModel
from rt3c.stages.models import load_model
from rt3c.stages.prune.stages import DenseRecipe, dense_baseline, joint_finetune, layer_masks
from rt3c.stages.prune.training import (
    PRECISION_CHOICES,
    Teacher,
    TrainSettings,
    evaluate,
    resolve_precision,
)
from rt3c.stages.search.config import SearchConfig
from rt3c.stages.search.evaluate import CandidatePlanner
from rt3c.stages.search.run import shortest_first
from rt3c.stages.search.space import SearchSpace


def predicted_battery_ratio(directory: Path, plan: Plan) -> float:
    """The plan's battery ratio along the run's trace, from the run's latency model (no compile)."""
    latency = json.loads((directory / "latency.json").read_text())
    trace = tuple(json.loads((directory / "eval.json").read_text())["trace"])
    model = LatencyModel.from_json(latency["model"])
    cycles = [
        model.predict_units(plan.layers, level) * latency["cycles_per_unit"]
        for level in range(len(plan.levels))
    ]
    board = load_board(directory / "board.toml")
    return simulate(board, model.dense_units() * latency["cycles_per_unit"], cycles, trace).battery_ratio


def with_densest_level(directory: Path, plan: Plan, warm_state: dict, density: float) -> Plan:
    """The search's winner with its level 0 at `density` in every layer (or as it was where it was denser),
    fitted on the warm-start weights."""
    search = json.loads((directory / "search.json").read_text())
    space_json = search["space"]
    space = SearchSpace(
        tuple(space_json["layers"]),
        len(plan.levels),
        tuple(space_json["pattern_counts"]),
        tuple(space_json["densities"]),
    )
    if density not in space.densities:
        raise SystemExit(f"--densest {density}: not one of the search's densities {space.densities}")
    choices = list(search["best"]["choices"])
    for position, decision in enumerate(space.decisions):
        if decision.kind == "density" and decision.level == 0:
            # At least D: a layer whose level 1 is denser than D keeps level 0 as it was (levels are nested).
            choices[position] = min(choices[position], space.densities.index(density))
    backbone = torch.load(directory / "stages" / "backbone.pt", map_location="cpu", weights_only=False)
    kept_tiles = backbone["payload"]
    weights = {name: warm_state[name].numpy().astype("float64") for name in kept_tiles}
    planner = CandidatePlanner(weights, tuple(space_json["tile"]), kept_tiles, space)
    metadata = {**plan.metadata, "planner": f"{plan.metadata.get('planner')}, level 0 at density {density}"}
    return Plan(plan.levels, planner.layers(choices), plan.model, metadata)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--level-weights", default="equal", help="comma-separated, or 'equal'")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=SearchConfig.joint_learning_rate)
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=SearchConfig.precision)
    parser.add_argument("--hidden-distill", type=float, default=0.0)
    parser.add_argument("--densest", type=float, help="train the winner with its level 0 at this density")
    args = parser.parse_args()
    args.precision = resolve_precision(args.precision)
    seeds = [int(s) for s in args.seeds.split(",")]
    level_weights = (
        None if args.level_weights == "equal" else [float(w) for w in args.level_weights.split(",")]
    )

    warm = torch.load(args.directory / "stages" / "warm.pt", map_location="cpu", weights_only=False)
    recipe = DenseRecipe(**warm["settings"]["backbone"]["dense"])
    plan = Plan.load(args.directory / "plan.json")
    measured = json.loads((args.directory / "eval.json").read_text())["battery_ratio"]
    print(
        f"winner: battery ratio {measured:.2f}x measured, {predicted_battery_ratio(args.directory, plan):.2f}x predicted"
    )
    if args.densest is not None:
        plan = with_densest_level(args.directory, plan, warm["state"], args.densest)
        print(
            f"level 0 at density {args.densest}: {predicted_battery_ratio(args.directory, plan):.2f}x predicted"
        )
    model = load_model(recipe.model)
    data = load_dataset(recipe.data, model, recipe.max_len)
    dense_baseline(model, data, recipe)
    teacher = Teacher(model.module)
    test = shortest_first(data.test)
    dense = 100 * evaluate(model, test)["accuracy"]
    levels = range(len(plan.levels))
    sparsity = " / ".join(f"{plan.sparsity(level):.3f}" for level in levels)
    print(
        f"plan {args.directory / 'plan.json'}: sparsity {sparsity}; dense {dense:.2f} % on {len(test)} test"
    )
    print(
        f"joint: {args.steps} steps at {args.lr} in {args.precision}, level weights {args.level_weights}, "
        f"hidden-state distillation {args.hidden_distill}"
    )
    print("| seed | " + " | ".join(f"L{level} test % (loss)" for level in levels) + " | minutes |")
    print("|---" * (len(plan.levels) + 2) + "|", flush=True)
    results = []
    for seed in seeds:
        model.module.load_state_dict(warm["state"])
        started = time.monotonic()
        settings = TrainSettings(
            args.steps,
            args.lr,
            32,
            seed,
            warmup=0.1,
            length_buckets=True,
            distill=0.7,
            precision=args.precision,
            hidden_distill=args.hidden_distill,
        )
        joint_finetune(model, data, plan, settings, teacher, level_weights)
        accuracy = [
            100 * evaluate(model, test, layer_masks(plan.layers, level))["accuracy"] for level in levels
        ]
        results.append(accuracy)
        cells = " | ".join(f"{a:.2f} ({dense - a:.2f})" for a in accuracy)
        print(f"| {seed} | {cells} | {(time.monotonic() - started) / 60:.1f} |", flush=True)
    if len(results) > 1:
        per_level = list(zip(*results, strict=True))
        cells = " | ".join(
            f"{statistics.mean(a):.2f} ({dense - statistics.mean(a):.2f}) ± {(max(a) - min(a)) / 2:.2f}"
            for a in per_level
        )
        print(f"| mean ± half spread | {cells} | |")
    print(
        json.dumps(
            {
                "steps": args.steps,
                "lr": args.lr,
                "precision": args.precision,
                "level_weights": level_weights,
                "densest": args.densest,
                "hidden_distill": args.hidden_distill,
                "sparsity": [plan.sparsity(level) for level in levels],
                "dense": dense,
                "seeds": seeds,
                "test_accuracy": results,
            }
        )
    )


if __name__ == "__main__":
    main()
