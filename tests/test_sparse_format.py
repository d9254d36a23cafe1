"""The plan file and the encoded layout: exact round trips for random shapes, tiles and pattern sets."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rt3c.core.errors import UserError
from rt3c.core.plan import LayerLevel, LayerPlan, Level, Plan
from rt3c.core.plan_text import PRUNED
from rt3c.core.sparse_format import encode_layer
from rt3c.core.sparsify import block_prune, one_shot_plan, pattern_sets


@st.composite
def layer_plans(draw: st.DrawFn, nested: bool = True) -> tuple[np.ndarray, LayerPlan]:
    """A random weight and a random plan: shape, tile, BP, pattern families (or free sets) per level."""
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 23)), draw(st.integers(1, 23)))
    n_levels = draw(st.integers(1, 3))
    k = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    size = rows * cols
    nnz = sorted(rng.integers(1, size + 1, n_levels).tolist(), reverse=True)
    grid = (-(-shape[0] // rows), -(-shape[1] // cols))
    ids = rng.integers(0, k, grid).astype(np.int16)
    ids[rng.random(grid) < draw(st.floats(0.0, 1.0))] = PRUNED
    orders = [rng.permutation(size) for _ in range(k)]
    levels = []
    for level_nnz in nnz:
        masks = np.zeros((k, size), dtype=bool)
        for i in range(k):
            order = orders[i] if nested else rng.permutation(size)
            masks[i, order[:level_nnz]] = True
        level_ids = ids.copy()
        if not nested:  # free choice of pattern per tile and level
            level_ids[ids != PRUNED] = rng.integers(0, k, int((ids != PRUNED).sum()))
        levels.append(LayerLevel(masks.reshape(k, rows, cols), level_ids))
    weight = rng.standard_normal(shape).astype(np.float32)
    return weight, LayerPlan("w", shape, (rows, cols), levels)


@settings(max_examples=150, deadline=None)
@given(layer_plans(nested=True))
def test_nested_plans_round_trip_with_one_value_buffer(case: tuple[np.ndarray, LayerPlan]) -> None:
    weight, plan = case
    plan.validate(len(plan.levels))
    assert plan.is_nested()
    encoded = encode_layer(weight, plan)
    assert encoded.nested and len(encoded.values) == 1
    for level in range(len(plan.levels)):
        np.testing.assert_array_equal(encoded.dense_weight(level), weight * plan.mask(level))
        # Section-major storage: a level reads exactly a prefix of the shared buffer, each value once.
        base, stride, offset = (
            np.array(c, dtype=np.int64) for c in zip(*encoded.value_slots(level), strict=True)
        )
        addresses = base[None, :] + np.arange(encoded.n_tiles)[:, None] * stride[None, :] + offset[None, :]
        nnz = encoded.levels[level].nnz
        assert sorted(addresses.reshape(-1).tolist()) == list(range(encoded.n_tiles * nnz))


@settings(max_examples=100, deadline=None)
@given(layer_plans(nested=False))
def test_any_plan_round_trips(case: tuple[np.ndarray, LayerPlan]) -> None:
    weight, plan = case
    encoded = encode_layer(weight, plan)
    assert encoded.nested == plan.is_nested()
    for level in range(len(plan.levels)):
        np.testing.assert_array_equal(encoded.dense_weight(level), weight * plan.mask(level))


@settings(max_examples=100, deadline=None)
@given(layer_plans(nested=False))
def test_runs_group_each_tile_row_by_chain(case: tuple[np.ndarray, LayerPlan]) -> None:
    weight, plan = case
    encoded = encode_layer(weight, plan)
    n_chains = encoded.n_chains
    assert len(encoded.tile_run_ptr) == plan.grid[0] * n_chains + 1
    # Every kept tile sits in exactly one run, and a run is one tile row's tiles of one chain.
    kept_rows, kept_cols = np.nonzero(plan.kept_tiles)
    assert sorted(zip(encoded.tile_rows().tolist(), encoded.tile_col.tolist(), strict=True)) == sorted(
        zip(kept_rows.tolist(), kept_cols.tolist(), strict=True)
    )
    runs = encoded.tile_runs()
    for run in np.unique(runs):
        columns = encoded.tile_col[runs == run].astype(np.int64)
        assert np.all(np.diff(columns) > 0)  # ascending within a run
        row = run // n_chains
        for level, layer_level in enumerate(plan.levels):
            # All tiles of a run have the same masks at every level: the run's chain.
            masks = layer_level.patterns[layer_level.tile_patterns[row, columns]]
            assert all(np.array_equal(mask, masks[0]) for mask in masks)
            assert len(set(encoded.tile_pattern(level)[runs == run].tolist())) == 1


@settings(max_examples=60, deadline=None)
@given(layer_plans())
def test_plan_json_round_trip(case: tuple[np.ndarray, LayerPlan]) -> None:
    _, layer = case
    plan = Plan([Level(f"L{i}", 1000 * (3 - i)) for i in range(len(layer.levels))], {"w": layer}, "m")
    again = Plan.from_json(json.loads(json.dumps(plan.to_json())))
    for a, b in zip(plan.layers["w"].levels, again.layers["w"].levels, strict=True):
        np.testing.assert_array_equal(a.patterns, b.patterns)
        np.testing.assert_array_equal(a.tile_patterns, b.tile_patterns)
    assert again.levels == plan.levels


def test_block_prune_hits_the_ratio_and_drops_the_weakest() -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((37, 29))
    kept = block_prune(weight, (4, 4), 0.4)
    assert (~kept).sum() == round(0.4 * kept.size)
    norms = np.array(
        [[np.linalg.norm(weight[r * 4 : r * 4 + 4, c * 4 : c * 4 + 4]) for c in range(8)] for r in range(10)]
    )
    assert norms[kept].min() >= norms[~kept].max()


def test_pattern_families_are_nested_with_one_count_per_set() -> None:
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((64, 48))
    kept = block_prune(weight, (4, 4), 0.25)
    levels = pattern_sets(weight, kept, (4, 4), 4, [10, 6, 3])
    for dense, sparse in itertools.pairwise(levels):
        assert not np.any(sparse.patterns & ~dense.patterns)  # family i nested level by level
        np.testing.assert_array_equal(dense.tile_patterns, sparse.tile_patterns)
    for level, nnz in zip(levels, [10, 6, 3], strict=True):
        assert (level.patterns.reshape(4, -1).sum(axis=1) == nnz).all()


def test_tiles_take_the_family_that_keeps_most_magnitude() -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((32, 32))
    kept = np.ones((8, 8), dtype=bool)
    levels = pattern_sets(weight, kept, (4, 4), 4, [8])
    tiles = np.abs(weight).reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(8, 8, 16)
    kept_by_family = tiles @ levels[0].patterns.reshape(4, 16).T.astype(float)
    chosen = np.take_along_axis(kept_by_family, levels[0].tile_patterns[..., None].astype(int), axis=2)[
        ..., 0
    ]
    np.testing.assert_allclose(chosen, kept_by_family.max(axis=2))


def test_one_shot_plan_meets_the_sparsities() -> None:
    rng = np.random.default_rng(3)
    weights = {"a": rng.standard_normal((64, 64)), "b": rng.standard_normal((128, 64))}
    levels = [Level("L0"), Level("L1"), Level("L2")]
    plan = one_shot_plan(weights, levels, [0.5, 0.75, 0.875], (4, 4), 8)
    assert plan.is_nested()
    for level, target in enumerate([0.5, 0.75, 0.875]):
        assert abs(plan.sparsity(level) - target) <= 1 / 32  # nnz per 4x4 tile is rounded to a whole count


@pytest.mark.parametrize(
    ("sparsities", "message"),
    [([0.5, 0.4], "increase"), ([0.5, 1.0], r"\[0, 1\)"), ([-0.1], r"\[0, 1\)"), ([], r"\[0, 1\)")],
)
def test_bad_sparsities(sparsities: list[float], message: str) -> None:
    with pytest.raises(UserError, match=message):
        one_shot_plan(
            {"a": np.ones((8, 8))}, [Level(f"L{i}") for i in range(len(sparsities))], sparsities, (4, 4), 2
        )
