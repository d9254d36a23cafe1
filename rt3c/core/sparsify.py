"""Pruning primitives on numpy weights (torch orientation `[out, in]`), shared by the one-shot planner
(`rt3c plan`) and the training pruner (`rt3c prune`).

- `block_prune`: BP's hard prune: drop the tiles of lowest L2 group norm.
- `pattern_sets`: PP: k pattern *families* per layer, nested across levels. Family i is a ranking of the
  in-tile positions; its mask at a level keeps the level's nonzero count of top-ranked positions, so the
  masks of one family are nested by construction and one id per tile serves every level (the encoded
  format then stores the ids once). Families are fitted like k-means: start from the k most frequent
  top-magnitude masks (as RT3's reference code does), assign each tile the family that keeps the most
  magnitude summed over the levels, re-rank each family by the magnitude of its tiles, repeat.
- `one_shot_plan`: both, for every layer, with no training (magnitudes only).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from rt3c.core.errors import SettingError, UserError
from rt3c.core.plan import LayerLevel, LayerPlan, Level, Plan
from rt3c.core.plan_text import PRUNED

FIT_ITERATIONS = 6


def _tiles(weight: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """float [R, C, rows*cols]: the weight cut into tiles, zero-padded up to whole tiles."""
    rows, cols = tile
    grid_rows, grid_cols = math.ceil(weight.shape[0] / rows), math.ceil(weight.shape[1] / cols)
    padded = np.zeros((grid_rows * rows, grid_cols * cols), dtype=np.float64)
    padded[: weight.shape[0], : weight.shape[1]] = weight
    return (
        padded.reshape(grid_rows, rows, grid_cols, cols)
        .transpose(0, 2, 1, 3)
        .reshape(grid_rows, grid_cols, -1)
    )


def block_prune(weight: np.ndarray, tile: tuple[int, int], ratio: float) -> np.ndarray:
    """bool [R, C]: the tiles kept after removing round(ratio * R * C) tiles of lowest L2 norm."""
    if not 0.0 <= ratio < 1.0:
        raise UserError(f"block ratio {ratio}: must be in [0, 1)")
    norms = np.linalg.norm(_tiles(weight, tile), axis=2)
    n_pruned = round(ratio * norms.size)
    kept = np.ones(norms.size, dtype=bool)
    kept[np.argsort(norms, axis=None, kind="stable")[:n_pruned]] = False
    return kept.reshape(norms.shape)


def _masks_from_rankings(rankings: np.ndarray, nnz: int) -> np.ndarray:
    """bool [k, positions]: each family's top-`nnz` positions."""
    masks = np.zeros(rankings.shape, dtype=bool)
    np.put_along_axis(masks, rankings[:, :nnz], True, axis=1)
    return masks


def _kept_magnitude(magnitudes: np.ndarray, rankings: np.ndarray, nnz_per_level: list[int]) -> np.ndarray:
    """float [T, k]: magnitude each family keeps in each tile, summed over the levels."""
    start = np.zeros((magnitudes.shape[0], rankings.shape[0]))
    return sum(
        (magnitudes @ _masks_from_rankings(rankings, nnz).T.astype(np.float64) for nnz in nnz_per_level),
        start,
    )


def _initial_rankings(
    magnitudes: np.ndarray, patterns: int, densest: int, ranking_values: np.ndarray
) -> np.ndarray:
    """The `patterns` most frequent top-`densest` masks, each ranked by the magnitude of its tiles."""
    n_positions = magnitudes.shape[1]
    top_masks = _masks_from_rankings(np.argsort(-magnitudes, axis=1, kind="stable"), densest)
    unique, inverse, counts = np.unique(top_masks, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(-counts, kind="stable")[:patterns]
    rankings = []
    for family in order:
        members = ranking_values[inverse == family].sum(axis=0)
        # Inside the mask first (by ranking value), then the rest (by ranking value).
        score = members + unique[family] * (2.0 * np.abs(members).max(initial=0.0) + 1.0)
        rankings.append(np.argsort(-score, kind="stable"))
    overall = np.argsort(-magnitudes.sum(axis=0), kind="stable")
    while len(rankings) < patterns:  # fewer distinct masks than families: shifted copies of the overall order
        rankings.append(np.roll(overall, len(rankings)) if n_positions > 1 else overall)
    return np.stack(rankings)


def pattern_sets(
    weight: np.ndarray,
    kept_tiles: np.ndarray,
    tile: tuple[int, int],
    patterns: int,
    nnz_per_level: list[int],
    signed_ranking: bool = False,
) -> list[LayerLevel]:
    """One `LayerLevel` per entry of `nnz_per_level` (non-increasing nonzeros per tile, densest first).

    `signed_ranking` ranks a family's positions by the signed sum of its tiles' weights, as RT3's
    reference code does (opposite signs cancel; measured in docs/PRUNING.md), instead of magnitudes."""
    n_positions = tile[0] * tile[1]
    if any(not 1 <= nnz <= n_positions for nnz in nnz_per_level):
        raise UserError(
            f"nonzeros per tile {nnz_per_level}: must be between 1 and {n_positions} for tile {tile}"
        )
    if list(nnz_per_level) != sorted(nnz_per_level, reverse=True):
        raise UserError(f"nonzeros per tile {nnz_per_level}: must not rise from one level to the next")
    if not 1 <= patterns <= 36:
        raise SettingError("patterns", "must be between 1 and 36", patterns)
    tiles = _tiles(weight, tile)
    magnitudes = np.abs(tiles[kept_tiles])  # [T, positions]
    ranking_values = tiles[kept_tiles] if signed_ranking else magnitudes
    if len(magnitudes):
        rankings = _initial_rankings(magnitudes, patterns, nnz_per_level[0], ranking_values)
        for _ in range(FIT_ITERATIONS):
            assignment = np.argmax(_kept_magnitude(magnitudes, rankings, nnz_per_level), axis=1)
            for family in range(patterns):
                members = ranking_values[assignment == family]
                if len(members):
                    # Stable sort on the previous ranking's order keeps ties where they were.
                    previous = rankings[family]
                    scores = members.sum(axis=0)[previous]
                    rankings[family] = previous[np.argsort(-scores, kind="stable")]
        assignment = np.argmax(_kept_magnitude(magnitudes, rankings, nnz_per_level), axis=1)
    else:
        rankings = np.tile(np.arange(n_positions), (patterns, 1))
        assignment = np.zeros(0, dtype=np.int64)
    ids = np.full(kept_tiles.shape, PRUNED, dtype=np.int16)
    ids[kept_tiles] = assignment
    return [
        LayerLevel(_masks_from_rankings(rankings, nnz).reshape(patterns, *tile), ids.copy())
        for nnz in nnz_per_level
    ]


def default_block_ratio(sparsities: list[float]) -> float:
    """BP takes half of the densest level's sparsity; patterns take the rest of every level's."""
    return sparsities[0] / 2


def check_sparsities(sparsities: list[float]) -> None:
    if not sparsities or any(not 0.0 <= s < 1.0 for s in sparsities):
        raise SettingError("sparsities", "every level's sparsity must be in [0, 1)", sparsities)
    if any(b <= a for a, b in itertools.pairwise(sparsities)):
        raise SettingError("sparsities", "levels must increase in sparsity (densest first)", sparsities)


def nnz_for_levels(sparsities: list[float], block_ratio: float, tile: tuple[int, int]) -> list[int]:
    """Nonzeros per kept tile so that (1 - block_ratio) * nnz / tile_size is nearest each level's density."""
    size = tile[0] * tile[1]
    nnz = [min(size, max(1, round((1 - s) / (1 - block_ratio) * size))) for s in sparsities]
    for level in range(1, len(nnz)):  # rounding must not make a sparser level denser
        nnz[level] = min(nnz[level], nnz[level - 1])
    return nnz


def one_shot_plan(
    weights: dict[str, np.ndarray],
    levels: list[Level],
    sparsities: list[float],
    tile: tuple[int, int],
    patterns: int,
    block_ratio: float | None = None,
    model: str | None = None,
    signed_ranking: bool = False,
) -> Plan:
    """Magnitude BP, then magnitude pattern families, for every layer in `weights` (torch `[out, in]`)."""
    check_sparsities(sparsities)
    if len(levels) != len(sparsities):
        raise SettingError("sparsities", f"{len(sparsities)} values for {len(levels)} levels", sparsities)
    if min(tile) < 1:
        raise SettingError("tile", "both sides must be positive", f"{tile[0]}x{tile[1]}")
    ratio = default_block_ratio(sparsities) if block_ratio is None else block_ratio
    if not 0.0 <= ratio <= sparsities[0]:
        raise SettingError(
            "block_ratio", f"must be in [0, the densest level's sparsity {sparsities[0]}]", ratio
        )
    nnz = nnz_for_levels(sparsities, ratio, tile)
    layers = {}
    for name, weight in weights.items():
        kept = block_prune(weight, tile, ratio)
        layers[name] = LayerPlan(
            name,
            (weight.shape[0], weight.shape[1]),
            tile,
            pattern_sets(weight, kept, tile, patterns, nnz, signed_ranking),
        )
    plan = Plan(
        levels, layers, model, {"planner": "one-shot magnitude", "block_ratio": ratio, "nnz_per_tile": nnz}
    )
    plan.validate()
    return plan
