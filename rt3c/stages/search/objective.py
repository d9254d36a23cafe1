"""What `rt3c search` maximises: a reward for a candidate's `Evaluation` (accuracy and latency per level).

- `accuracy` (RT3's): the mean accuracy of the levels normalised by the dense model's, when every level meets
  its deadline; a penalty growing with the worst overshoot otherwise; and a further penalty unless accuracy
  falls (or stays) as the level gets sparser.
- `energy`: the battery ratio along the board's DVFS trace (inferences per charge of the levels over the
  dense model's at the top frequency, `rt3c.core.battery`), when every level meets its deadline and loses at most
  its budget of accuracy points against a reference accuracy (the dense model's, or the proxy accuracy of the
  space's densest candidate: `rt3c.stages.search.config.LOSS_REFERENCES`); a candidate over budget scores below any candidate
  within it and above any late one (1 - over / (over + 10) for `over` points over budget: still ordered when
  every candidate is far over, as on a search that cannot recover its sparse levels), so the search first
  finds the budget, then saves energy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rt3c.core.battery import simulate
from rt3c.core.boards import Board
from rt3c.core.errors import SettingError
from rt3c.stages.search.space import SearchSpace

OBJECTIVES = ("accuracy", "energy")
INFEASIBLE_REWARD = -1.0
NON_MONOTONE_PENALTY = 0.5
OVER_BUDGET_SCALE = 10.0
"""Points over budget at which an over-budget candidate's reward has fallen from 1 to 0.5."""


@dataclass(frozen=True)
class Evaluation:
    accuracy: tuple[float, ...]
    """Per level, densest first."""
    latency_s: tuple[float, ...]
    deadline_s: tuple[float, ...]
    sparsity: tuple[float, ...] = ()
    """Per level: fraction of the planned layers' weights removed."""

    @property
    def feasible(self) -> bool:
        return all(lat <= dl for lat, dl in zip(self.latency_s, self.deadline_s, strict=True))


def late_reward(evaluation: Evaluation) -> float:
    """Below every feasible candidate's reward, and lower the later the worst level is."""
    overshoot = max(lat / dl for lat, dl in zip(evaluation.latency_s, evaluation.deadline_s, strict=True))
    return INFEASIBLE_REWARD - min(overshoot - 1.0, 1.0)


@dataclass(frozen=True)
class AccuracyObjective:
    dense_accuracy: float
    tolerance: float = 0.0
    """How much accuracy may rise from a level to a sparser one before it counts as rising (the noise of
    accuracy measured on a subset)."""

    name = "accuracy"

    def __call__(self, evaluation: Evaluation) -> float:
        if not evaluation.feasible:
            return late_reward(evaluation)
        value = float(np.mean(evaluation.accuracy)) / self.dense_accuracy
        if any(
            sparser > denser + self.tolerance + 1e-9
            for denser, sparser in itertools.pairwise(evaluation.accuracy)
        ):
            value -= NON_MONOTONE_PENALTY
        return value


@dataclass(frozen=True)
class EnergyObjective:
    board: Board
    dense_cycles: float
    """Cycles of one dense inference (the battery baseline runs it at the top frequency)."""
    trace: tuple[float, ...]
    reference_accuracy: tuple[float, ...]
    """Per level: the validation accuracy (0-1) the level's loss is measured against."""
    max_loss_points: tuple[float, ...]
    """Per level: accuracy points (0-100 scale) the level may lose against `reference_accuracy`."""

    name = "energy"

    def battery_ratio(self, evaluation: Evaluation) -> float:
        cycles = [
            latency * level.frequency_hz
            for latency, level in zip(evaluation.latency_s, self.board.levels, strict=True)
        ]
        return simulate(self.board, self.dense_cycles, cycles, self.trace).battery_ratio

    def points_over_budget(self, evaluation: Evaluation) -> float:
        return sum(
            max(0.0, 100.0 * (reference - accuracy) - budget)
            for accuracy, reference, budget in zip(
                evaluation.accuracy, self.reference_accuracy, self.max_loss_points, strict=True
            )
        )

    def __call__(self, evaluation: Evaluation) -> float:
        if not evaluation.feasible:
            return late_reward(evaluation)
        over = self.points_over_budget(evaluation)
        if over > 0.0:
            return 1.0 - over / (over + OVER_BUDGET_SCALE)
        return 1.0 + self.battery_ratio(evaluation)


Objective = AccuracyObjective | EnergyObjective


def loss_reference(
    kind: str,
    space: SearchSpace,
    evaluator: Callable[[list[list[int]]], list[tuple[Evaluation, bool]]],
    dense_validation: float,
) -> dict:
    """Per level, the validation accuracy the energy objective's budgets are measured against: the dense
    model's, or the space's densest candidate's after the same recovery as every candidate (never above the
    dense model's). The densest candidate is evaluated through the search's cache, so it costs one
    candidate and the search reuses it if it samples it."""
    n_levels = space.n_levels
    if kind == "dense":
        return {"kind": kind, "accuracy": (dense_validation,) * n_levels}
    choices = space.densest()
    ((evaluation, _),) = evaluator([choices])
    accuracy = tuple(min(dense_validation, a) for a in evaluation.accuracy)
    return {"kind": kind, "choices": choices, "accuracy": accuracy}


def parse_max_loss(text: str, levels: int) -> tuple[float, ...]:
    """`--max-loss 1.0,1.5,2.0`: accuracy points per level, densest first."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise SettingError("max_loss", "expected comma-separated numbers of points", repr(text)) from None
    if len(values) != levels:
        raise SettingError("max_loss", f"{len(values)} values for the board's {levels} levels", repr(text))
    if any(not 0.0 <= v <= 100.0 for v in values):
        raise SettingError("max_loss", "each budget must be between 0 and 100 points", repr(text))
    return values
