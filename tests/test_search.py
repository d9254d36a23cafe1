"""The search: legal candidates only, a learning controller, the same budget for random search, caching."""

from __future__ import annotations

import numpy as np
import pytest

from rt3c.errors import UserError
from rt3c.search.controller import CachedEvaluator, Evaluation, random_search, reinforce, reward
from rt3c.search.evaluate import CandidatePlanner, evaluation_pool, level_sparsity
from rt3c.search.space import SearchSpace

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
    log = random_search(SPACE, CachedEvaluator(synthetic), 0.9, 64, seed=3)
    for episode in log.episodes:
        for entry in SPACE.describe(episode.choices).values():
            densities = entry["density"]
            assert densities == sorted(densities, reverse=True)


def test_reward_rules() -> None:
    ok = Evaluation((0.8, 0.7, 0.6), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(ok, 0.8) == np.mean([0.8, 0.7, 0.6]) / 0.8
    late = Evaluation((0.8, 0.7, 0.6), (1.0, 3.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(late, 0.8) < -1.0
    rising = Evaluation((0.6, 0.7, 0.6), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(rising, 0.8) < reward(ok, 0.8)
    # A rise within the tolerance (the accuracy's noise) is not penalised.
    noisy = Evaluation((0.7, 0.71, 0.6), (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert reward(noisy, 0.8, tolerance=0.02) == np.mean(noisy.accuracy) / 0.8
    assert reward(noisy, 0.8) == reward(noisy, 0.8, tolerance=0.02) - 0.5


def test_controller_learns_and_beats_its_start() -> None:
    log = reinforce(SPACE, CachedEvaluator(synthetic), 0.9, 240, batch_size=8, seed=0)
    rewards = [e.reward for e in log.episodes]
    assert len(rewards) == 240
    assert np.mean(rewards[-48:]) > np.mean(rewards[:48]) + 0.15
    assert log.best.evaluation.feasible
    random_log = random_search(SPACE, CachedEvaluator(synthetic), 0.9, 240, batch_size=8, seed=0)
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
    planner = CandidatePlanner(weights, (4, 4), 0.25, space)
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


def test_ray_backend_needs_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="rt3c\\[ray\\]"), evaluation_pool(None, "ray", 2, None):
            pass
    else:
        pytest.skip("ray is installed")
    with pytest.raises(UserError, match="--backend threads"), evaluation_pool(None, "threads", 2, None):
        pass
