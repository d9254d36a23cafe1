"""Does the search's accuracy proxy rank candidates like full training does?

    .venv/bin/python benchmarks/proxy_rank.py DIR [--candidates 8] [--full-steps 150]

DIR is a finished `rt3c search` (trained, not --one-shot). The proxy is what the search measured for each
candidate: validation accuracy after `recovery` steps of joint distillation from the warm start. Here
`--candidates` distinct feasible candidates of its log, spread evenly over the proxy's range, are each
trained with `--full-steps` of the joint stage (distillation from the dense model) from the same warm start
and measured on the same validation examples. Printed: per candidate the proxy and the trained accuracy
(mean of the levels, and per level), and Spearman's rank correlation between the two.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from rt3c.core.plan import Level, Plan
from rt3c.stages.datasets import load_dataset
from rt3c.stages.models import load_model
from rt3c.stages.prune.stages import DenseRecipe, dense_baseline, joint_finetune, layer_masks
from rt3c.stages.prune.training import Teacher, TrainSettings, evaluate
from rt3c.stages.search.evaluate import CandidatePlanner
from rt3c.stages.search.space import SearchSpace


def ranks(values: list[float]) -> np.ndarray:
    """Ranks with ties averaged (Spearman's convention)."""
    array = np.asarray(values)
    order = array.argsort(kind="stable")
    result = np.empty(len(array))
    result[order] = np.arange(len(array))
    for value in np.unique(array):
        tied = array == value
        result[tied] = result[tied].mean()
    return result


def spearman(a: list[float], b: list[float]) -> str:
    if len(set(a)) < 2 or len(set(b)) < 2:
        return "undefined (one side does not vary)"
    return f"{np.corrcoef(ranks(a), ranks(b))[0, 1]:+.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--full-steps", type=int, default=150)
    args = parser.parse_args()
    search = json.loads((args.directory / "search.json").read_text())
    settings = search["settings"]
    episodes = {}
    for log in search["methods"].values():
        for episode in log:
            if episode["feasible"]:
                episodes[tuple(episode["choices"])] = episode
    by_proxy = sorted(episodes.values(), key=lambda e: float(np.mean(e["accuracy"])))
    picks = [
        by_proxy[round(i)] for i in np.linspace(0, len(by_proxy) - 1, min(args.candidates, len(by_proxy)))
    ]

    model = load_model(settings["model"])
    data = load_dataset(settings["data"], model, settings["max_len"])
    dense_baseline(
        model,
        data,
        DenseRecipe(
            settings["model"],
            settings["data"],
            settings["max_len"],
            settings["dense_steps"],
            seed=settings["seed"],
        ),
    )
    teacher = Teacher(model.module)
    stages = args.directory / "stages"
    backbone = torch.load(stages / "backbone.pt", map_location="cpu", weights_only=False)
    kept_tiles = backbone["payload"]
    # Candidates start from the warm start's weights, as in the search (the backbone's without one).
    start = backbone["state"]
    if (stages / "warm.pt").is_file():
        start = torch.load(stages / "warm.pt", map_location="cpu", weights_only=False)["state"]
    model.module.load_state_dict(start)
    space_json = search["space"]
    n_levels = len(picks[0]["accuracy"])
    space = SearchSpace(
        tuple(space_json["layers"]),
        n_levels,
        tuple(space_json["pattern_counts"]),
        tuple(space_json["densities"]),
    )
    parameters = dict(model.module.named_parameters())
    weights = {name: parameters[name].detach().numpy().astype(np.float64) for name in space.layers}
    planner = CandidatePlanner(weights, tuple(space_json["tile"]), kept_tiles, space)
    validation_size = settings["validation_size"]
    index = torch.arange(min(validation_size, len(data.validation)))
    validation = type(data.validation)(
        tuple(t[index] for t in data.validation.inputs), data.validation.targets[index]
    )
    joint = TrainSettings(
        args.full_steps,
        settings["learning_rate"],
        settings["batch_size"],
        settings["seed"],
        warmup=0.1,
        length_buckets=True,
        distill=settings["distill"],
    )
    proxy, trained = [], []
    print("| candidate | sparsity per level | proxy accuracy per level | trained accuracy per level |")
    print("|---|---|---|---|")
    for number, episode in enumerate(picks):
        layers = planner.layers(episode["choices"])
        plan = Plan([Level(f"L{i}") for i in range(n_levels)], layers, model.name)
        model.module.load_state_dict(start)
        torch.manual_seed(settings["seed"])
        joint_finetune(model, data, plan, joint, teacher)
        accuracy = [
            evaluate(model, validation, layer_masks(layers, level))["accuracy"] for level in range(n_levels)
        ]
        proxy.append(episode["accuracy"])
        trained.append(accuracy)
        print(
            f"| {number} | {' / '.join(f'{s:.3f}' for s in episode['sparsity'])} | "
            f"{' / '.join(f'{100 * a:.2f}' for a in episode['accuracy'])} | "
            f"{' / '.join(f'{100 * a:.2f}' for a in accuracy)} |",
            flush=True,
        )
    print(
        f"\nSpearman rank correlation, proxy vs trained ({len(picks)} candidates, {args.full_steps} joint steps, "
        f"{len(validation)} validation examples):"
    )
    print(f"  mean of the levels: {spearman([np.mean(p) for p in proxy], [np.mean(t) for t in trained])}")
    for level in range(n_levels):
        print(f"  L{level}: {spearman([p[level] for p in proxy], [t[level] for t in trained])}")


if __name__ == "__main__":
    main()
