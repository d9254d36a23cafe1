"""Does the REINFORCE controller earn its place? It against random search at the same budget, over budgets
and seeds, on a constructed search problem of minilm-l6's size (36 layers, 3 levels, the default pattern
counts and densities) whose evaluation costs nothing, so only the search methods are compared.

    .venv/bin/python benchmarks/bench_controller.py [--budgets 24,48,96,192,384] [--seeds 5]

The constructed problem: each layer has a cost (latency per unit of density; layer shapes of MiniLM: the
FFN layers cost 4x an attention projection) and a sensitivity drawn once (seed 0; a few layers are very
sensitive, as in real Transformers); a level's latency is the sum of cost x density, its accuracy falls
with sensitivity x (1 - density)^2; deadlines bind at 70 / 55 / 45 % of the dense latency. The reward is
`rt3c search`'s accuracy objective. Printed: per budget, the mean over seeds of each method's best reward
and of the mean reward of the last quarter of its episodes, and how often the controller's best beats
random's.
"""

from __future__ import annotations

import argparse

import numpy as np

from rt3c.stages.search.controller import CachedEvaluator, random_search, reinforce
from rt3c.stages.search.objective import AccuracyObjective, Evaluation
from rt3c.stages.search.space import SearchSpace

LAYERS = tuple(f"layer{b}.{kind}" for b in range(6) for kind in ("q", "k", "v", "o", "ffn_in", "ffn_out"))
DENSE_ACCURACY = 0.82
DEADLINE_FRACTIONS = (0.7, 0.55, 0.45)


def constructed_problem() -> tuple[SearchSpace, CachedEvaluator]:
    rng = np.random.default_rng(0)
    cost = {name: 4.0 if "ffn" in name else 1.0 for name in LAYERS}
    sensitivity = {
        name: float(s) for name, s in zip(LAYERS, rng.lognormal(-4.0, 1.0, len(LAYERS)), strict=True)
    }
    space = SearchSpace(LAYERS, 3, (2, 4, 8), (1.0, 0.75, 0.625, 0.5, 0.375, 0.25))
    dense_latency = sum(cost.values())
    deadlines = tuple(f * dense_latency for f in DEADLINE_FRACTIONS)

    def evaluate(choices: tuple[int, ...]) -> Evaluation:
        plan = space.describe(list(choices))
        latency, accuracy = [], []
        for level in range(3):
            # More patterns per set: a little more accuracy, a little more latency (branches).
            latency.append(
                sum(cost[n] * e["density"][level] * (1 + 0.01 * e["patterns"]) for n, e in plan.items())
            )
            loss = sum(
                sensitivity[n] * (1 - e["density"][level]) ** 2 / (1 + 0.05 * e["patterns"])
                for n, e in plan.items()
            )
            accuracy.append(DENSE_ACCURACY - loss)
        return Evaluation(tuple(accuracy), tuple(latency), deadlines)

    return space, CachedEvaluator(evaluate)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budgets", default="24,48,96,192,384")
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    objective = AccuracyObjective(DENSE_ACCURACY)
    print(
        "| episodes per method | REINFORCE best | random best | REINFORCE last-quarter mean | random "
        "last-quarter mean | REINFORCE best > random best |"
    )
    print("|---|---|---|---|---|---|")
    for budget in (int(b) for b in args.budgets.split(",")):
        rows = []
        for seed in range(args.seeds):
            space, evaluator = constructed_problem()
            logs = [
                method(space, evaluator, objective, budget, batch_size=4, seed=seed)
                for method in (reinforce, random_search)
            ]
            quarter = max(1, budget // 4)
            rows.append(
                [log.best.reward for log in logs]
                + [float(np.mean([e.reward for e in log.episodes[-quarter:]])) for log in logs]
            )
        table = np.array(rows)
        wins = int(np.sum(table[:, 0] > table[:, 1]))
        print(
            f"| {budget} | {table[:, 0].mean():.4f} | {table[:, 1].mean():.4f} | {table[:, 2].mean():.4f} | "
            f"{table[:, 3].mean():.4f} | {wins} of {args.seeds} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
