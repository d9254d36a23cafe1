"""What `rt3c search` leaves in DIR, each file written whole or not at all:

- `checkpoint/` (the trained weights; `rt3c export --model DIR/checkpoint`), `model.onnx` + `model.json` (that
  model exported at the search's token count), `plan.json` (levels carry the board's frequencies),
  `board.toml` (a copy of the board, which `rt3c simulate DIR` and `rt3c report DIR` read);
- `latency.json`: the model compiled with the plan for the board's target, every kernel measured per level
  (`units`: instructions counted under qemu, or host seconds) next to what the latency model predicted;
- `eval.json`: dense and per-level test accuracy, loss in points, latency against the deadline, the battery
  ratio along the board's trace, the objective (keys in docs/SEARCH.md);
- `search.json`: the settings, the space, every episode of both methods, the best candidate.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rt3c.codegen.targets import get_target
from rt3c.core.battery import simulate
from rt3c.core.boards import Board, board_file
from rt3c.core.files import atomic_output
from rt3c.core.plan import Plan
from rt3c.core.progress import step
from rt3c.stages.export import export_model
from rt3c.stages.latency.measure import measure_model
from rt3c.stages.latency.units import ProgramCost
from rt3c.stages.models.base import LoadedModel
from rt3c.stages.models.checkpoint import save_checkpoint
from rt3c.stages.prune.stages import model_reference
from rt3c.stages.search.controller import Episode, SearchLog
from rt3c.stages.search.evaluate import level_latencies, level_sparsity

if TYPE_CHECKING:
    from rt3c.stages.search.config import SearchConfig
    from rt3c.stages.search.setup import SearchSetup

SEARCH_FORMAT = "rt3c-search"
EVAL_FORMAT = "rt3c-search-eval"


@dataclass
class SearchResult:
    out: Path
    best_method: str
    best: Episode
    evaluation: dict
    """eval.json."""
    logs: dict[str, SearchLog]

    @property
    def meets_constraints(self) -> bool:
        return all(level["meets_deadline"] for level in self.evaluation["levels"])


def episode_json(episode: Episode) -> dict:
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


def latency_json(setup: SearchSetup, plan: Plan, measured: ProgramCost, board: Board) -> dict:
    """The compiled plan's cost per level, measured, next to the latency model's prediction."""
    model = setup.latency_model
    levels = []
    for level, board_level in enumerate(board.levels):
        units = measured.level_units(level)
        latency_s = units * setup.cycles_per_unit / board_level.frequency_hz
        levels.append(
            {
                "name": plan.levels[level].name,
                "frequency_hz": board_level.frequency_hz,
                "deadline_s": board_level.deadline_s,
                "sparsity": level_sparsity(plan.layers, level),
                "units": units,
                "sparse_units": measured.level_units(level, sparse=True),
                "other_units": measured.level_units(level, sparse=False),
                "predicted_units": model.predict_units(plan.layers, level),
                "latency_s": latency_s,
                "meets_deadline": latency_s <= board_level.deadline_s,
            }
        )
    return {
        "format": "rt3c-latency",
        "board": board.name,
        "target": model.target,
        "source": setup.source,
        "unit": model.unit,
        "cycles_per_unit": setup.cycles_per_unit,
        "host_hz": setup.host_hz,
        "how": {
            "units": "every kernel of the model compiled with the plan for the target, measured per level",
            "sparse_units": "its SparseLinear kernels",
            "other_units": "every other kernel",
            "predicted_units": "the latency model (fitted SparseLinear cost + the reference's other kernels)",
            "dense_units": "the reference's other kernels plus the dense linear kernel of each planned layer",
        },
        "dense_units": model.dense_units(),
        "levels": levels,
        "predicted_latency_s": list(level_latencies(model, plan.layers, board, setup.cycles_per_unit)),
        "model": model.to_json(),
        "plan_kernels": measured.to_json(),
    }


def evaluation_json(
    config: SearchConfig,
    setup: SearchSetup,
    board: Board,
    latency: dict,
    test_accuracy: list[float],
    dense_test_accuracy: float,
) -> dict:
    level_cycles = [level["units"] * setup.cycles_per_unit for level in latency["levels"]]
    battery = simulate(board, setup.dense_cycles, level_cycles, setup.trace)
    return {
        "format": EVAL_FORMAT,
        "objective": config.objective,
        "dense": {"test_accuracy": 100 * dense_test_accuracy},
        "levels": [
            {
                "level": level["name"],
                "frequency_mhz": level["frequency_hz"] / 1e6,
                "sparsity": level["sparsity"],
                "test_accuracy": 100 * accuracy,
                "loss_points": 100 * (dense_test_accuracy - accuracy),
                "latency_ms": 1e3 * level["latency_s"],
                "deadline_ms": 1e3 * level["deadline_s"],
                "meets_deadline": level["meets_deadline"],
            }
            for level, accuracy in zip(latency["levels"], test_accuracy, strict=True)
        ],
        "battery_ratio": battery.battery_ratio,
        "trace": list(setup.trace),
    }


def _write_json(path: Path, value: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")


def write_outputs(
    *,
    config: SearchConfig,
    model: LoadedModel,
    board: Board,
    setup: SearchSetup,
    plan: Plan,
    logs: dict[str, SearchLog],
    best_method: str,
    distinct_candidates: int,
    loss_reference: dict | None,
    dense_validation: float,
    tolerance: float,
    max_loss: tuple[float, ...] | None,
    test_accuracy: list[float],
    dense_test_accuracy: float,
    started: float,
) -> SearchResult:
    out = Path(config.out)
    save_checkpoint(
        out / "checkpoint",
        model_reference(config.model),
        model.module,
        {"plan": "../plan.json", "data": config.data},
    )
    plan.save(out / "plan.json")
    shutil.copyfile(board_file(config.board), out / "board.toml")
    onnx_path = out / "model.onnx"
    onnx_path.unlink(missing_ok=True)  # a resumed run exports again
    export_model(model, onnx_path, seq_len=config.seq_len)
    target = get_target(board.target)
    with step(f"compile the plan for {target.name} and measure every level ({setup.source})"):
        measured = measure_model(onnx_path, plan, target, setup.source)
    latency = latency_json(setup, plan, measured, board)
    evaluation = evaluation_json(config, setup, board, latency, test_accuracy, dense_test_accuracy)
    best = logs[best_method].best
    search = {
        "format": SEARCH_FORMAT,
        "model": config.model,
        "data": config.data,
        "board": board.name,
        "target": board.target,
        "settings": config.settings(),
        "objective": config.objective,
        "max_loss_points": list(max_loss) if max_loss else None,
        "loss_reference": loss_reference,
        "space": {
            "layers": list(setup.space.layers),
            "pattern_counts": list(setup.space.pattern_counts),
            "densities": list(setup.space.densities),
            "block_ratio": setup.block_ratio,
            "tile": list(config.tile),
        },
        "dense": {"validation_accuracy": dense_validation, "test_accuracy": dense_test_accuracy},
        "monotone_tolerance": tolerance,
        "methods": {method: [episode_json(e) for e in log.episodes] for method, log in logs.items()},
        "comparison": {method: method_summary(log) for method, log in logs.items()},
        "distinct_candidates": distinct_candidates,
        "best": {
            "method": best_method,
            **episode_json(best),
            "plan": setup.space.describe(best.choices),
            "test_accuracy": test_accuracy,
            "measured_latency_s": [level["latency_s"] for level in latency["levels"]],
            "meets_constraints": all(level["meets_deadline"] for level in latency["levels"]),
        },
        "elapsed_s": time.perf_counter() - started,
    }
    _write_json(out / "latency.json", latency)
    _write_json(out / "eval.json", evaluation)
    _write_json(out / "search.json", search)
    return SearchResult(out, best_method, best, evaluation, logs)


def method_summary(log: SearchLog) -> dict:
    """Best reward and the mean reward of the last quarter of the episodes (how far the method learned)."""
    rewards = [e.reward for e in log.episodes]
    quarter = rewards[-max(1, len(rewards) // 4) :]
    return {"best_reward": max(rewards), "last_quarter_mean_reward": float(np.mean(quarter))}
