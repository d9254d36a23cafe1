"""`rt3c search`: pattern sets and sparsity per layer and DVFS level, meeting every level's deadline.

Steps: the dense baseline (cached, as `rt3c prune`'s), the model exported at the search's token count
(`DIR/model.onnx`, for `rt3c compile`), the latency model for the board's target (`rt3c.latency`), then
REINFORCE with the recurrent controller and random search with the same budget over one cache of
evaluated candidates, and for the best candidate found: its plan (`DIR/plan.json`), its SparseLinear
kernels built and measured, and its accuracy per level on the test split.

Outputs in DIR: `plan.json`, `model.onnx` (+ `model.json`), `search.json` (settings, every episode of both
methods, the best candidate), `latency.json` (the latency model and the best plan's measured cost per
level, with the source of every number). `rt3c simulate DIR` and `rt3c report DIR` read them.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from rt3c.boards import Board, load_board
from rt3c.codegen.targets import get_target
from rt3c.datasets import Split, load_dataset
from rt3c.errors import UserError
from rt3c.export import export_model
from rt3c.files import atomic_output
from rt3c.latency import (
    LatencyModel,
    build_latency_model,
    check_source,
    cycles_per_unit,
    default_source,
    host_clock_hz,
    measure_plan,
)
from rt3c.models import load_model
from rt3c.plan import Level, Plan
from rt3c.progress import console, step
from rt3c.prune.pipeline import DEFAULT_LAYERS, PruneConfig, dense_baseline, select_layers
from rt3c.prune.training import evaluate
from rt3c.search.controller import CachedEvaluator, Episode, SearchLog, random_search, reinforce
from rt3c.search.evaluate import (
    CandidateEvaluator,
    EvaluatorSpec,
    evaluation_pool,
    level_latencies,
    level_sparsity,
)
from rt3c.search.space import SearchSpace

SEARCH_FORMAT = "rt3c-search"


@dataclass
class SearchConfig:
    model: str
    data: str
    board: str
    out: Path
    episodes: int = 24
    """Per method: the controller and random search get the same budget."""
    batch_size: int = 4
    seq_len: int = 16
    """Tokens of the compiled model, whose latency is modelled."""
    max_len: int = 64
    """Tokens of the data the accuracy is measured on."""
    validation_size: int = 200
    tile: tuple[int, int] = (4, 4)
    block_ratio: float = 0.1
    pattern_counts: tuple[int, ...] = (2, 4, 8)
    densities: tuple[float, ...] = (1.0, 0.75, 0.625, 0.5, 0.375, 0.25)
    layers: str = DEFAULT_LAYERS
    latency: str | None = None
    """"qemu" or "host"; default: qemu for ARM targets, host for the host."""
    backend: str = "process"
    workers: int | None = None
    finetune_steps: int = 0
    dense_steps: int = 300
    seed: int = 0

    def settings(self) -> dict:
        values = asdict(self)
        values["out"] = str(self.out)
        return json.loads(json.dumps(values))


def check_config(config: SearchConfig) -> None:
    if config.episodes < 1 or config.batch_size < 1:
        raise UserError("--episodes and --batch-size: must be at least 1")
    if not 0.0 <= config.block_ratio < 1.0:
        raise UserError(f"--block-ratio {config.block_ratio}: must be in [0, 1)")
    if not config.densities or any(not 0.0 < d <= 1.0 for d in config.densities):
        raise UserError(f"--densities {list(config.densities)}: each must be in (0, 1]")
    if list(config.densities) != sorted(config.densities, reverse=True):
        raise UserError(f"--densities {list(config.densities)}: list them densest first")
    if not config.pattern_counts or any(not 1 <= k <= 36 for k in config.pattern_counts):
        raise UserError(f"--patterns {list(config.pattern_counts)}: each must be between 1 and 36")
    if config.validation_size < 1:
        raise UserError(f"--validation-size {config.validation_size}: must be at least 1")


def _shortest_first(split: Split, size: int | None = None) -> Split:
    """The first `size` examples (the split is already shuffled), ordered by length: `Split.batch` trims
    each batch to its longest row, so sorted batches carry little padding (2-3x faster evaluation)."""
    count = len(split) if size is None else min(size, len(split))
    index = torch.arange(count)
    if len(split.inputs) == 2:  # (input_ids, attention_mask)
        index = index[torch.argsort(split.inputs[1][:count].sum(dim=1), stable=True)]
    return Split(tuple(t[index] for t in split.inputs), split.targets[index])


def _episode_json(episode: Episode) -> dict:
    evaluation = episode.evaluation
    return {
        "episode": episode.episode,
        "choices": episode.choices,
        "reward": episode.reward,
        "cached": episode.cached,
        "feasible": evaluation.feasible,
        "accuracy": list(evaluation.accuracy),
        "latency_s": list(evaluation.latency_s),
        "deadline_s": list(evaluation.deadline_s),
        "sparsity": list(evaluation.sparsity),
    }


def _print_episode(method: str, episode: Episode) -> None:
    evaluation = episode.evaluation
    console.print(
        f"  {method} {episode.episode}: {episode.reward:+.3f}  "
        f"acc {'/'.join(f'{100 * a:.1f}' for a in evaluation.accuracy)}  "
        f"ms {'/'.join(f'{1e3 * t:.1f}' for t in evaluation.latency_s)}"
        f"{'' if evaluation.feasible else '  late'}{'  cached' if episode.cached else ''}",
        soft_wrap=True,
    )


@dataclass
class SearchResult:
    out: Path
    best_method: str
    best: Episode
    test_accuracy: list[float]
    dense_test_accuracy: float
    measured_latency_s: list[float]
    deadlines_s: list[float]
    logs: dict[str, SearchLog]

    @property
    def meets_constraints(self) -> bool:
        return all(lat <= dl for lat, dl in zip(self.measured_latency_s, self.deadlines_s, strict=True))


def search_model(config: SearchConfig) -> SearchResult:
    """Run the search and write DIR (see the module docstring)."""
    check_config(config)
    started = time.perf_counter()
    board = load_board(config.board)
    target = get_target(board.target)
    source = config.latency or default_source(target)
    check_source(source, target)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    model = load_model(config.model)
    with step(f"loading {config.data} for {model.name}"):
        data = load_dataset(config.data, model, config.max_len)
    prune_config = PruneConfig(
        model=config.model,
        data=config.data,
        out=out,
        sparsities=[0.5],
        tile=config.tile,
        max_len=config.max_len,
        dense_steps=config.dense_steps,
        seed=config.seed,
    )
    with step("dense baseline (cached)"):
        dense_baseline(model, data, prune_config)
    parameters = select_layers(model, config.layers, config.tile)
    weights = {name: p.detach().numpy().astype(np.float32) for name, p in parameters.items()}
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    export_model(model, onnx_path, seq_len=config.seq_len)
    latency_model, _ = build_latency_model(onnx_path, weights, config.tile, config.seq_len, target, source)
    host_hz = host_clock_hz() if source == "host" else None
    per_unit = cycles_per_unit(source, board.cycles_per_instruction, host_hz)

    space = SearchSpace(tuple(weights), len(board.levels), config.pattern_counts, config.densities)
    validation = _shortest_first(data.validation, config.validation_size)
    with step(f"dense accuracy on {len(validation)} validation examples"):
        dense_validation = evaluate(model, validation)["accuracy"]
    # Accuracy on n examples has a standard error of sqrt(p (1 - p) / n): a sparser level "gaining" less
    # than that is noise, not a reason for the monotonicity penalty.
    tolerance = math.sqrt(dense_validation * (1 - dense_validation) / len(validation))
    spec = EvaluatorSpec(
        model=config.model,
        dense_state={name: t.detach().clone() for name, t in model.module.state_dict().items()},
        layers=tuple(weights),
        tile=config.tile,
        block_ratio=config.block_ratio,
        space=space,
        validation=validation,
        latency=latency_model.to_json(),
        board=board,
        cycles_per_unit=per_unit,
        train=data.train if config.finetune_steps else None,
        finetune_steps=config.finetune_steps,
        seed=config.seed,
    )
    local = CandidateEvaluator(spec, model)
    logs: dict[str, SearchLog] = {}
    with evaluation_pool(spec, config.backend, config.workers, local) as (evaluate_fn, map_fn):
        evaluator = CachedEvaluator(evaluate_fn, map_fn)
        for method, run in (("reinforce", reinforce), ("random", random_search)):
            with step(f"{method}: {config.episodes} episodes"):
                logs[method] = run(
                    space,
                    evaluator,
                    dense_validation,
                    config.episodes,
                    batch_size=config.batch_size,
                    seed=config.seed,
                    tolerance=tolerance,
                    on_episode=lambda episode, method=method: _print_episode(method, episode),
                )
    best_method = max(logs, key=lambda method: logs[method].best.reward)
    best = logs[best_method].best
    layers = local.planner.layers(best.choices)

    plan = Plan(
        [Level(f"L{i}", level.frequency_khz) for i, level in enumerate(board.levels)],
        layers,
        config.model,
        {
            "planner": f"rt3c search ({best_method}, episode {best.episode})",
            "board": board.name,
            "block_ratio": config.block_ratio,
            "choices": space.describe(best.choices),
        },
    )
    plan.save(out / "plan.json")
    with step(f"measure the best plan's {len(layers) * len(board.levels)} SparseLinear kernels ({source})"):
        measured = measure_plan(latency_model, layers, weights)
    with step(f"test accuracy of the dense model and {len(board.levels)} levels"):
        test = _shortest_first(data.test)
        dense_test = evaluate(model, test)["accuracy"]
        test_accuracy = [
            evaluate(model, test, local.masks(layers, level))["accuracy"]
            for level in range(len(board.levels))
        ]
    latency = _latency_json(latency_model, layers, measured.to_json(), board, source, per_unit, host_hz)
    result = SearchResult(
        out,
        best_method,
        best,
        test_accuracy,
        dense_test,
        [level["latency_s"] for level in latency["levels"]],
        [lv.deadline_s for lv in board.levels],
        logs,
    )
    search = {
        "format": SEARCH_FORMAT,
        "model": config.model,
        "data": config.data,
        "board": board.name,
        "target": target.name,
        "settings": config.settings(),
        "space": {
            "layers": list(space.layers),
            "pattern_counts": list(space.pattern_counts),
            "densities": list(space.densities),
            "block_ratio": config.block_ratio,
            "tile": list(config.tile),
        },
        "dense": {"validation_accuracy": dense_validation, "test_accuracy": dense_test},
        "monotone_tolerance": tolerance,
        "methods": {method: [_episode_json(e) for e in log.episodes] for method, log in logs.items()},
        "distinct_candidates": len(evaluator.cache),
        "best": {
            "method": best_method,
            **_episode_json(best),
            "plan": space.describe(best.choices),
            "test_accuracy": test_accuracy,
            "measured_latency_s": result.measured_latency_s,
            "meets_constraints": result.meets_constraints,
        },
        "elapsed_s": time.perf_counter() - started,
    }
    _write_json(out / "latency.json", latency)
    _write_json(out / "search.json", search)
    return result


def _latency_json(
    model: LatencyModel,
    layers: dict,
    measured: dict,
    board: Board,
    source: str,
    per_unit: float,
    host_hz: float | None,
) -> dict:
    """The best plan's cost per level, measured (its kernels) and predicted (the cost model)."""
    kernel_units = {k["symbol"]: k for k in measured["kernels"]}
    levels = []
    for level, board_level in enumerate(board.levels):
        sparse = sum(k["units"] * k["calls"][level] for k in kernel_units.values())
        units = model.other_units + sparse
        latency_s = units * per_unit / board_level.frequency_hz
        levels.append(
            {
                "name": f"L{level}",
                "frequency_hz": board_level.frequency_hz,
                "deadline_s": board_level.deadline_s,
                "sparsity": level_sparsity(layers, level),
                "units": units,
                "sparse_units": sparse,
                "other_units": model.other_units,
                "predicted_units": model.predict_units(layers, level),
                "latency_s": latency_s,
                "meets_deadline": latency_s <= board_level.deadline_s,
            }
        )
    return {
        "format": "rt3c-latency",
        "board": board.name,
        "target": model.target,
        "source": source,
        "unit": model.unit,
        "cycles_per_unit": per_unit,
        "host_hz": host_hz,
        "how": {
            "sparse_units": "the best plan's SparseLinear kernels, built for the target and measured",
            "other_units": "every other kernel of the model compiled with a reference plan, measured",
            "predicted_units": "the fitted SparseLinear cost model plus other_units (what the search used)",
            "dense_units": "other_units plus the dense linear kernel of each planned layer, measured",
        },
        "dense_units": model.dense_units(),
        "levels": levels,
        "predicted_latency_s": list(level_latencies(model, layers, board, per_unit)),
        "model": model.to_json(),
        "plan_kernels": measured,
    }


def _write_json(path: Path, value: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")
