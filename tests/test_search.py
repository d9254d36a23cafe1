"""The search: legal candidates only, a learning controller, the same budget for random search, caching."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from rt3c.core.boards import Board, FrequencyLevel
from rt3c.core.errors import UserError
from rt3c.core.sparsify import block_prune
from rt3c.stages.search.controller import CachedEvaluator, random_search, reinforce
from rt3c.stages.search.evaluate import CandidatePlanner, evaluation_pool, level_sparsity
from rt3c.stages.search.objective import (
    AccuracyObjective,
    EnergyObjective,
    Evaluation,
    late_reward,
    loss_reference,
    parse_max_loss,
)
from rt3c.stages.search.space import SearchSpace

SPACE = SearchSpace(layers=("a", "b", "c", "d"), n_levels=3)
COST = {"a": 4.0, "b": 1.0, "c": 2.0, "d": 0.5}
SENSITIVITY = {"a": 0.02, "b": 0.2, "c": 0.05, "d": 0.3}
DEADLINES = (6.0, 4.0, 2.5)


def synthetic(choices: tuple[int, ...]) -> Evaluation:
    """Latency grows with each layer's density times its cost; accuracy falls with its sparsity times its
    sensitivity, so the best candidate prunes the costly, insensitive layers and keeps the others."""
    plan = SPACE.describe(list(choices))
    latency, accuracy = [], []
    for level in range(SPACE.n_levels):
        latency.append(sum(COST[name] * entry["density"][level] for name, entry in plan.items()))
        loss = sum(SENSITIVITY[name] * (1 - entry["density"][level]) ** 2 for name, entry in plan.items())
        accuracy.append(0.9 - loss + 0.001 * np.log2(plan["a"]["patterns"]))
    return Evaluation(tuple(accuracy), tuple(latency), DEADLINES)


def test_candidates_are_nested() -> None:
    log = random_search(SPACE, CachedEvaluator(synthetic), AccuracyObjective(0.9), 64, seed=3)
    for episode in log.episodes:
        for entry in SPACE.describe(episode.choices).values():
            densities = entry["density"]
            assert densities == sorted(densities, reverse=True)


def test_accuracy_reward_rules() -> None:
    reward, lenient = AccuracyObjective(0.8), AccuracyObjective(0.8, tolerance=0.02)
    ok = Evaluation((0.8, 0.7, 0.6), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(ok) == np.mean([0.8, 0.7, 0.6]) / 0.8
    late = Evaluation((0.8, 0.7, 0.6), (1.0, 3.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(late) < -1.0
    rising = Evaluation((0.6, 0.7, 0.6), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(rising) < reward(ok)
    # A rise within the tolerance (the accuracy's noise) is not penalised.
    noisy = Evaluation((0.7, 0.71, 0.6), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert lenient(noisy) == np.mean(noisy.accuracy) / 0.8
    assert reward(noisy) == lenient(noisy) - 0.5


# A board on which energy per inference is cycles x V^2: level i runs at 1 GHz / (i + 1).
BOARD = Board(
    "constructed",
    "",
    "aarch64",
    1000.0,
    1.0,
    1e-9,
    0.0,
    tuple(FrequencyLevel(1e9 / (i + 1), 1.0 - 0.1 * i, deadline) for i, deadline in enumerate(DEADLINES)),
)


def _energy_objective(budgets: tuple[float, ...]) -> EnergyObjective:
    # Evaluation latencies are seconds; the dense model takes 8 s at the top level.
    return EnergyObjective(BOARD, 8.0 * 1e9, (0.5, 0.3, 0.2), (0.9, 0.9, 0.9), budgets)


def test_energy_reward_rules() -> None:
    energy = _energy_objective((1.0, 2.0, 3.0))
    cheap = Evaluation((0.895, 0.885, 0.875), (2.0, 1.5, 1.0), DEADLINES)
    dear = Evaluation((0.895, 0.885, 0.875), (4.0, 3.0, 2.0), DEADLINES)
    assert energy(cheap) > energy(dear) > 1.0  # within budget: the less energy, the better
    assert energy(cheap) == 1.0 + energy.battery_ratio(cheap)
    over = Evaluation((0.895, 0.885, 0.86), (1.0, 0.5, 0.5), DEADLINES)  # level 2 loses 4 points, 1 over
    assert energy.points_over_budget(over) == pytest.approx(1.0)
    assert 0.0 < energy(over) < 1.0 < energy(dear)  # over budget ranks below every candidate within it
    far_over = Evaluation((0.6, 0.6, 0.6), (1.0, 0.5, 0.5), DEADLINES)  # 30 points too many per level
    late = Evaluation((0.9, 0.9, 0.9), (1.0, 1.0, 3.0), DEADLINES)
    assert energy(late) == late_reward(late) < 0.0 < energy(far_over) < energy(over)  # ordered however far


def _every_candidate(space: SearchSpace) -> list[list[int]]:
    candidates: list[list[int]] = [[]]
    for position, decision in enumerate(space.decisions):
        candidates = [
            [*chosen, option]
            for chosen in candidates
            for option in range(len(decision.options))
            if space.allowed(position, chosen)[option]
        ]
    return candidates


CONSTRUCTED_SPACE = SearchSpace(layers=("a", "d"), n_levels=3, densities=(1.0, 0.75, 0.5, 0.25, 0.125))


def _constructed_evaluator(space: SearchSpace, proxy_offset: float = 0.0) -> Callable[..., Evaluation]:
    """Accuracy falls with the square of each layer's sparsity, latency with its density; a proxy reads
    `proxy_offset` below the accuracy training would reach."""

    def evaluate(choices: tuple[int, ...]) -> Evaluation:
        plan = space.describe(list(choices))
        latency, accuracy = [], []
        for level in range(3):
            latency.append(4.0 + sum(COST[n] * entry["density"][level] for n, entry in plan.items()))
            loss = sum(SENSITIVITY[n] * (1 - entry["density"][level]) ** 2 for n, entry in plan.items())
            accuracy.append(0.9 - loss - proxy_offset)
        return Evaluation(tuple(accuracy), tuple(latency), (8.0, 6.5, 5.0))

    return evaluate


def test_loss_reference_measures_budgets_against_the_densest_candidates_proxy() -> None:
    """A proxy that reads 3 points low puts every candidate over a 2-point budget against the dense model;
    against the densest candidate's proxy accuracy the budgets admit exactly the candidates that the true
    accuracy admits against dense."""
    space = CONSTRUCTED_SPACE
    candidates = [tuple(c) for c in _every_candidate(space)]
    budgets = (2.0, 4.0, 10.0)
    proxy = CachedEvaluator(_constructed_evaluator(space, proxy_offset=0.03))
    dense = loss_reference("dense", space, proxy, 0.9)
    assert dense["accuracy"] == (0.9, 0.9, 0.9) and not proxy.cache  # nothing evaluated
    densest = loss_reference("densest", space, proxy, 0.9)
    assert list(proxy.cache) == [tuple(space.densest())] == [tuple(densest["choices"])]
    assert densest["accuracy"] == pytest.approx((0.87, 0.87, 0.87))
    against_dense = EnergyObjective(BOARD, 8.0e9, (0.5, 0.3, 0.2), dense["accuracy"], budgets)
    against_densest = EnergyObjective(BOARD, 8.0e9, (0.5, 0.3, 0.2), densest["accuracy"], budgets)
    true_objective = _energy_objective(budgets)
    truth = _constructed_evaluator(space)

    def within(objective: EnergyObjective, evaluate: Callable[..., Evaluation]) -> set[tuple[int, ...]]:
        return {c for c in candidates if objective.points_over_budget(evaluate(c)) == 0.0}

    assert not within(against_dense, proxy.evaluate)
    assert within(against_densest, proxy.evaluate) == within(true_objective, truth) != set()
    # A proxy above the dense model's accuracy is capped at it.
    optimistic = CachedEvaluator(_constructed_evaluator(space, proxy_offset=-0.05))
    assert loss_reference("densest", space, optimistic, 0.9)["accuracy"] == (0.9, 0.9, 0.9)


def test_both_objectives_respect_deadlines_and_budget() -> None:
    """Over every candidate of a small constructed space: the accuracy objective's best meets every
    deadline with the best mean accuracy; the energy objective's best meets every deadline, keeps each
    level within its loss budget, and needs the least energy of all such candidates (and less than the
    accuracy objective's best)."""
    space = CONSTRUCTED_SPACE
    evaluate = _constructed_evaluator(space)
    budgets = (2.0, 4.0, 10.0)
    energy, accurate = _energy_objective(budgets), AccuracyObjective(0.9)
    evaluations = [evaluate(tuple(c)) for c in _every_candidate(space)]
    within = [e for e in evaluations if e.feasible and energy.points_over_budget(e) == 0.0]
    assert 0 < len(within) < len([e for e in evaluations if e.feasible]) < len(evaluations)
    best_accuracy = max(evaluations, key=accurate)
    assert best_accuracy.feasible
    assert np.mean(best_accuracy.accuracy) == max(np.mean(e.accuracy) for e in evaluations if e.feasible)
    best_energy = max(evaluations, key=energy)
    assert best_energy.feasible and energy.points_over_budget(best_energy) == 0.0
    assert energy.battery_ratio(best_energy) == max(energy.battery_ratio(e) for e in within)
    assert energy.battery_ratio(best_energy) > energy.battery_ratio(best_accuracy)
    # A search with the energy objective settles on a candidate within the budget, never on a cheaper
    # one over it.
    log = random_search(space, CachedEvaluator(evaluate), energy, 200, batch_size=8, seed=0)
    assert log.best.evaluation.feasible and energy.points_over_budget(log.best.evaluation) == 0.0
    assert any(energy.points_over_budget(e.evaluation) > 0 for e in log.episodes if e.evaluation.feasible)


def test_max_loss_parsing() -> None:
    assert parse_max_loss("1,1.5,2", 3) == (1.0, 1.5, 2.0)
    for text, culprit in (
        ("1,2", "2 values"),
        ("1,x,2", "numbers"),
        ("1,nan,2", "between"),
        ("-1,1,1", "between"),
    ):
        with pytest.raises(UserError, match=culprit):
            parse_max_loss(text, 3)


def test_controller_learns_and_beats_its_start() -> None:
    log = reinforce(SPACE, CachedEvaluator(synthetic), AccuracyObjective(0.9), 240, batch_size=8, seed=0)
    rewards = [e.reward for e in log.episodes]
    assert len(rewards) == 240
    assert np.mean(rewards[-48:]) > np.mean(rewards[:48]) + 0.15
    assert log.best.evaluation.feasible
    random_log = random_search(
        SPACE, CachedEvaluator(synthetic), AccuracyObjective(0.9), 240, batch_size=8, seed=0
    )
    assert len(random_log.episodes) == 240
    assert np.mean(rewards[-48:]) > np.mean([e.reward for e in random_log.episodes])


def test_cache_evaluates_each_candidate_once() -> None:
    calls = []

    def counting(choices: tuple[int, ...]) -> Evaluation:
        calls.append(choices)
        return synthetic(choices)

    evaluator = CachedEvaluator(counting)
    candidate = [0] * len(SPACE.decisions)
    results = evaluator([candidate, candidate])
    assert [cached for _, cached in results] == [False, True]
    assert evaluator([candidate])[0][1] is True
    assert len(calls) == 1


def test_candidate_plans_share_block_pruning_and_follow_the_choices() -> None:
    rng = np.random.default_rng(0)
    weights = {"a": rng.standard_normal((16, 32)), "b": rng.standard_normal((32, 16))}
    space = SearchSpace(layers=("a", "b"), n_levels=3, densities=(1.0, 0.5, 0.25))
    kept = {name: block_prune(weight, (4, 4), 0.25) for name, weight in weights.items()}
    planner = CandidatePlanner(weights, (4, 4), kept, space)
    # a: 8 patterns, densities 1.0 / 0.5 / 0.25; b: 2 patterns, 0.5 at every level.
    layers = planner.layers([2, 0, 1, 2, 0, 1, 1, 1])
    assert [len(level.patterns) for level in layers["a"].levels] == [8, 8, 8]
    assert [level.nonzeros_per_tile for level in layers["a"].levels] == [16, 8, 4]
    assert [level.nonzeros_per_tile for level in layers["b"].levels] == [8, 8, 8]
    for name, layer in layers.items():
        assert layer.is_nested()
        assert np.array_equal(layer.kept_tiles, planner.kept[name])  # one BP for every candidate
        assert layer.kept_tiles.mean() == 0.75
    # Level sparsity: BP's quarter of the tiles, then the kept fraction of each kept tile.
    assert level_sparsity(layers, 2) == 1 - 0.75 * (0.25 * 512 + 0.5 * 512) / 1024


def test_unknown_backend() -> None:
    with pytest.raises(UserError, match=r"^backend threads: "), evaluation_pool(None, "threads", 2, None):
        pass
