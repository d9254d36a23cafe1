"""The encoded layout of one pattern-pruned linear layer (pure numpy; docs/FORMAT.md is the reference).

The ONNX passes store these arrays as initializers, the kernels read them as they are, and the C
runtime puts them in flash. The layer computes `y[m, n] = sum_k x[m, k] * W[n, k] + b[n]` with `W` in
torch orientation `[out, in]`, cut into `rows x cols` tiles over a grid padded up to whole tiles.

- Block index (BP), CSR over tiles: `tile_row_ptr` [R+1] and `tile_col` [T], kept tiles of each tile row
  ordered by their pattern ids, then column. T = tiles kept by BP; the same at every level.
- Pattern ids (PP): per level, `tile_pattern` [T], an index into that level's `pattern_table`
  [P, nnz] whose row lists the in-tile positions (`r * cols + c`) in the order the tile's values are
  stored. The table is the mask set "baked into" the kernel; it is not weight data.
- Values: `values` [T, nnz] float32 buffers. A nested plan has one buffer shared by every level: each
  tile's values are ordered sparsest level first, so level l reads the prefix `values[t, :nnz_l]`.
  A non-nested plan gets one buffer per level.

Why `tile_pattern` indexes a per-level table rather than the plan's pattern set: with shared prefixes the
order of a tile's values at level l depends on its masks at l and every sparser level, so a table row
is one distinct chain of masks. For plans whose sets are nested family by family (pattern i at level
l+1 inside pattern i at level l, as the one-shot planner and the pruner make them) there are exactly k
chains per level and every level's `tile_pattern` is the same array, which is then stored once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt3c.errors import UserError
from rt3c.plan import LayerPlan

MAX_TABLE_PATTERNS = 256


@dataclass
class LevelEncoding:
    buffer: int
    """Index into `EncodedLayer.values`: the buffer this level reads a prefix of."""
    pattern_table: np.ndarray
    """int16 [P, nnz]: in-tile positions `r * cols + c`, in value order, for each pattern."""
    tile_pattern: np.ndarray
    """uint8 [T]: each kept tile's row of `pattern_table`."""

    @property
    def nnz(self) -> int:
        return int(self.pattern_table.shape[1])


@dataclass
class EncodedLayer:
    name: str
    shape: tuple[int, int]
    tile: tuple[int, int]
    tile_row_ptr: np.ndarray
    tile_col: np.ndarray
    values: list[np.ndarray]
    levels: list[LevelEncoding]

    @property
    def grid(self) -> tuple[int, int]:
        return len(self.tile_row_ptr) - 1, -(-self.shape[1] // self.tile[1])

    @property
    def nested(self) -> bool:
        return len(self.values) == 1

    @property
    def n_tiles(self) -> int:
        return len(self.tile_col)

    def tile_rows(self) -> np.ndarray:
        """int [T]: the tile row of each kept tile (expanded from the CSR row pointer)."""
        return np.repeat(np.arange(len(self.tile_row_ptr) - 1), np.diff(self.tile_row_ptr.astype(np.int64)))

    def value_bytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.values)

    def index_bytes(self) -> int:
        """Block index plus pattern ids (packed, and stored once when levels share them)."""
        distinct = _distinct_arrays([level.tile_pattern for level in self.levels])
        ids = sum(len(pack_pattern_ids(ids, pattern_bits(table_size))) for ids, table_size in distinct)
        return self.tile_row_ptr.nbytes + self.tile_col.nbytes + ids

    def dense_weight(self, level: int) -> np.ndarray:
        """float32 `shape`: the weight this level computes with (zeros where pruned)."""
        rows, cols = self.tile
        grid_rows, grid_cols = self.grid
        encoding = self.levels[level]
        values = self.values[encoding.buffer][:, : encoding.nnz]
        tiles = np.zeros((grid_rows, grid_cols, rows * cols), dtype=np.float32)
        positions = encoding.pattern_table[encoding.tile_pattern]  # [T, nnz]
        tiles[self.tile_rows()[:, None], self.tile_col.astype(np.int64)[:, None], positions] = values
        dense = tiles.reshape(grid_rows, grid_cols, rows, cols).transpose(0, 2, 1, 3)
        return dense.reshape(grid_rows * rows, grid_cols * cols)[: self.shape[0], : self.shape[1]]


def pattern_bits(table_size: int) -> int:
    """Pattern ids take 4 bits when a level has at most 16 patterns, else 8."""
    return 4 if table_size <= 16 else 8


def pack_pattern_ids(ids: np.ndarray, table_size: int) -> np.ndarray:
    """uint8 bytes: two 4-bit ids per byte (tile 2i in the low nibble) or one 8-bit id per byte."""
    ids = ids.astype(np.uint8)
    if pattern_bits(table_size) == 8:
        return ids
    padded = np.concatenate([ids, np.zeros(len(ids) % 2, dtype=np.uint8)])
    return (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)


def unpack_pattern_ids(packed: np.ndarray, table_size: int, n_tiles: int) -> np.ndarray:
    if pattern_bits(table_size) == 8:
        return packed[:n_tiles].astype(np.uint8)
    return np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)[:n_tiles].astype(np.uint8)


def _distinct_arrays(arrays: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
    distinct: list[np.ndarray] = []
    for array in arrays:
        if not any(np.array_equal(array, seen) for seen in distinct):
            distinct.append(array)
    return [(array, int(array.max(initial=0)) + 1) for array in distinct]


def _index_dtype(max_value: int) -> type[np.unsignedinteger]:
    return np.uint8 if max_value <= 0xFF else np.uint16 if max_value <= 0xFFFF else np.uint32


def _chain_order(chain_masks: list[np.ndarray]) -> np.ndarray:
    """Positions of the densest mask in the chain, ordered sparsest level first (row-major within one)."""
    order: list[int] = []
    taken = np.zeros_like(chain_masks[0])
    for mask in reversed(chain_masks):
        new = mask & ~taken
        order.extend(np.flatnonzero(new).tolist())
        taken |= mask
    return np.array(order, dtype=np.int16)


def encode_layer(weight: np.ndarray, plan: LayerPlan) -> EncodedLayer:
    """Encode `weight` (float, torch `[out, in]`) under `plan`. Masked-out weights are dropped."""
    if tuple(weight.shape) != tuple(plan.shape):
        raise UserError(
            f"plan layer {plan.name}: shape {list(plan.shape)} but the weight is {list(weight.shape)}"
        )
    rows, cols = plan.tile
    grid_rows, grid_cols = plan.grid
    padded = np.zeros((grid_rows * rows, grid_cols * cols), dtype=np.float32)
    padded[: plan.shape[0], : plan.shape[1]] = weight
    tiles = (
        padded.reshape(grid_rows, rows, grid_cols, cols)
        .transpose(0, 2, 1, 3)
        .reshape(grid_rows, grid_cols, -1)
    )

    kept = plan.kept_tiles
    tile_r, tile_c = np.nonzero(kept)
    # Within a tile row, tiles go by pattern id (densest level first), then column: a kernel then takes the
    # same branch for a run of tiles, which the branch predictor follows (random ids cost a misprediction
    # per tile; docs/KERNELS.md has the numbers).
    plan_ids = [level.tile_patterns[tile_r, tile_c] for level in plan.levels]
    by_pattern = np.lexsort((tile_c, *reversed(plan_ids), tile_r))
    tile_r, tile_c = tile_r[by_pattern], tile_c[by_pattern]
    row_ptr = np.concatenate([[0], np.cumsum(kept.sum(axis=1))])
    tile_values = tiles[tile_r, tile_c]  # [T, rows*cols]
    flat_sets = [level.patterns.reshape(len(level.patterns), -1) for level in plan.levels]
    ids = [level.tile_patterns[tile_r, tile_c].astype(np.int64) for level in plan.levels]
    n_levels = len(plan.levels)

    if plan.is_nested():
        # One chain of masks per distinct tuple of pattern ids from level l down to the sparsest.
        chains = np.stack(ids, axis=1) if ids[0].size else np.zeros((0, n_levels), dtype=np.int64)
        full_chain, full_index = np.unique(chains, axis=0, return_inverse=True)
        full_index = full_index.reshape(-1)
        orders = [_chain_order([flat_sets[lv][chain[lv]] for lv in range(n_levels)]) for chain in full_chain]
        densest_nnz = plan.levels[0].nonzeros_per_tile
        order_of_tile = np.array(orders, dtype=np.int64).reshape(len(orders), densest_nnz)[full_index]
        values = [np.take_along_axis(tile_values, order_of_tile, axis=1).astype(np.float32)]
        levels = []
        for level in range(n_levels):
            suffixes, tile_suffix = np.unique(chains[:, level:], axis=0, return_inverse=True)
            tile_suffix = tile_suffix.reshape(-1)
            nnz = plan.levels[level].nonzeros_per_tile
            first_tile = np.array(
                [np.flatnonzero(tile_suffix == s)[0] for s in range(len(suffixes))], dtype=np.int64
            )
            table = order_of_tile[first_tile, :nnz].astype(np.int16).reshape(len(suffixes), nnz)
            levels.append(LevelEncoding(0, table, _checked_ids(tile_suffix, plan.name, level)))
    else:
        values, levels = [], []
        for level in range(n_levels):
            table = np.stack([np.flatnonzero(mask).astype(np.int16) for mask in flat_sets[level]])
            order = table[ids[level]].astype(np.int64)
            values.append(np.take_along_axis(tile_values, order, axis=1).astype(np.float32))
            levels.append(LevelEncoding(level, table, _checked_ids(ids[level], plan.name, level)))

    return EncodedLayer(
        name=plan.name,
        shape=plan.shape,
        tile=plan.tile,
        tile_row_ptr=row_ptr.astype(_index_dtype(int(row_ptr[-1]))),
        tile_col=tile_c.astype(_index_dtype(grid_cols - 1)),
        values=values,
        levels=levels,
    )


def _checked_ids(ids: np.ndarray, layer: str, level: int) -> np.ndarray:
    if ids.size and int(ids.max()) >= MAX_TABLE_PATTERNS:
        raise UserError(
            f"plan layer {layer} level {level}: {int(ids.max()) + 1} distinct mask chains exceed "
            f"{MAX_TABLE_PATTERNS}; make the pattern sets nested family by family"
        )
    return ids.astype(np.uint8)
