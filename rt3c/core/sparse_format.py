"""The encoded layout of one pattern-pruned linear layer (pure numpy; docs/FORMAT.md is the reference).

The ONNX passes store these arrays as initializers, the kernels read them as they are, and the C
runtime puts them in flash. The layer computes `y[m, n] = sum_k x[m, k] * W[n, k] + b[n]` with `W` in
torch orientation `[out, in]`, cut into `rows x cols` tiles over a grid padded up to whole tiles.

- Block index (BP) and pattern ids (PP) in one two-level CSR. Each kept tile has a *chain*: the tuple of
  its pattern ids at every level. Tiles of a tile row are grouped by chain, and `tile_run_ptr` [R*C+1]
  delimits each (tile row r, chain c) run: tiles `tile_run_ptr[r*C+c] .. tile_run_ptr[r*C+c+1]-1`, with
  `tile_col` [T] their tile columns (ascending within a run). T = tiles kept by BP, the same at every
  level. A tile's patterns are implied by its run, so no per-tile id is stored, and a kernel runs each
  chain's tiles in one loop with the chain's pattern unrolled: no per-tile decode or dispatch.
- Patterns: per level, `pattern_table` [P, nnz] lists each pattern's in-tile positions (`r * cols + c`)
  in the order the tile's values are stored, and `chain_pattern` [C] maps each chain to its row of the
  table. Both are baked into the level's kernel; they are not weight data.
- Values: flat float32 buffers, or int8 with a float32 scale per output channel (`scale`, rt3c.core.quantize). A nested plan has one buffer shared by every level: each tile's values
  are ordered sparsest level first, and the buffer is stored *section-major*: first the sparsest level's
  `nnz_S` values of every tile (`[T, nnz_S]`), then the values the next denser level adds to every tile
  (`[T, nnz_{S-1} - nnz_S]`), and so on. Level l reads the sections up to its own, a contiguous prefix of
  the buffer, so a sparse level streams only its own bytes (tile-major storage would touch every cache
  line of the densest level's values). A non-nested plan gets one buffer per level (one section each).

Why a level's table rows are chains of masks rather than the plan's patterns: with shared prefixes the
order of a tile's values at level l depends on its masks at l and every sparser level. For plans whose
sets are nested family by family (pattern i at level l+1 inside pattern i at level l, as the one-shot
planner and the pruner make them) there are exactly k chains and every `chain_pattern` is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rt3c.core.checks import finite_array
from rt3c.core.errors import UserError
from rt3c.core.plan import LayerPlan
from rt3c.core.plan_limits import check_layer_size
from rt3c.core.quantize import Quantized, WeightType, quantize_channels

MAX_CHAINS = 256
"""Chains per layer: each is one unrolled loop in every level's kernel, so this bounds kernel size."""


@dataclass
class LevelEncoding:
    buffer: int
    """Index into `EncodedLayer.values`: the buffer this level reads its sections of."""
    pattern_table: np.ndarray
    """int16 [P, nnz]: in-tile positions `r * cols + c`, in value order, for each pattern."""
    chain_pattern: np.ndarray
    """int64 [C]: each chain's row of `pattern_table`."""

    @property
    def nnz(self) -> int:
        return int(self.pattern_table.shape[1])


def section_widths(cuts: list[int]) -> list[int]:
    """Widths of the sections between ascending value counts `cuts` (the nnz of the levels, sparsest first)."""
    return [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]


def to_sections(tile_major: np.ndarray, cuts: list[int]) -> np.ndarray:
    """[T, cuts[-1]] values, tile by tile -> the flat section-major buffer (module docstring), same dtype."""
    starts = [0, *cuts[:-1]]
    return np.concatenate(
        [tile_major[:, a:b].reshape(-1) for a, b in zip(starts, cuts, strict=True)]
        or [np.zeros(0, tile_major.dtype)]
    ).astype(tile_major.dtype)


@dataclass
class EncodedLayer:
    name: str
    shape: tuple[int, int]
    tile: tuple[int, int]
    tile_run_ptr: np.ndarray
    """[R * C + 1]: run (r, c) holds tiles `tile_run_ptr[r*C+c] .. tile_run_ptr[r*C+c+1]-1`."""
    tile_col: np.ndarray
    values: list[np.ndarray]
    """float32 (or int8 with `scale`) [T * width] each, section-major (module docstring)."""
    levels: list[LevelEncoding]
    scale: np.ndarray | None = None
    """float32 [out]: the scale of each output channel's int8 values; None for float32 values."""
    kept_level_cuts: list[int] | None = None
    """Of a model that `encode --level L` made: the value cuts of the one level it keeps. Its buffer is
    still section-major over the sparser levels, which are gone from the file (their nodes carried the
    cuts), so they are read from the node's `value_sections`."""

    @property
    def n_chains(self) -> int:
        return len(self.levels[0].chain_pattern)

    @property
    def grid(self) -> tuple[int, int]:
        return (len(self.tile_run_ptr) - 1) // self.n_chains, -(-self.shape[1] // self.tile[1])

    @property
    def nested(self) -> bool:
        return len(self.values) == 1

    @property
    def n_tiles(self) -> int:
        return len(self.tile_col)

    def tile_runs(self) -> np.ndarray:
        """int64 [T]: the run `r * C + c` of each kept tile (expanded from the run pointer)."""
        counts = np.diff(self.tile_run_ptr.astype(np.int64))
        # numpy's stubs type the diff of an int64 array as timedelta64, which repeat does not take.
        return np.repeat(np.arange(len(counts)), counts)  # type: ignore[arg-type]

    def tile_rows(self) -> np.ndarray:
        """int64 [T]: the tile row of each kept tile."""
        return self.tile_runs() // self.n_chains

    def tile_pattern(self, level: int) -> np.ndarray:
        """int64 [T]: each kept tile's row of the level's `pattern_table`."""
        return self.levels[level].chain_pattern[self.tile_runs() % self.n_chains]

    def value_cuts(self, level: int) -> list[int]:
        """Ascending value counts at which the sections of the level's buffer end, up to the level's nnz."""
        if self.kept_level_cuts is not None:
            return self.kept_level_cuts
        encoding = self.levels[level]
        return sorted(
            {
                other.nnz
                for other in self.levels
                if other.buffer == encoding.buffer and other.nnz <= encoding.nnz
            }
            - {0}
        )

    def value_slots(self, level: int) -> list[tuple[int, int, int]]:
        """For each of the level's value slots, (base, stride, offset): tile t's value is at
        `values[base + t * stride + offset]`."""
        cuts = self.value_cuts(level)
        slots = []
        for start, width in zip([0, *cuts[:-1]], section_widths(cuts), strict=True):
            slots += [(self.n_tiles * start, width, offset) for offset in range(width)]
        return slots

    @property
    def value_dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.scale is None else np.int8)

    def level_values(self, level: int) -> np.ndarray:
        """[T, nnz] (the buffer's dtype): the level's values of each tile, in value order."""
        buffer = self.values[self.levels[level].buffer]
        slots = self.value_slots(level)
        if not slots:
            return np.zeros((self.n_tiles, 0), self.value_dtype)
        base, stride, offset = (np.array(column)[None, :] for column in zip(*slots, strict=True))
        return buffer[base + np.arange(self.n_tiles)[:, None] * stride + offset]

    def value_bytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.values)

    def index_bytes(self) -> int:
        """The block index with the pattern runs; every level reads the same arrays."""
        return self.tile_run_ptr.nbytes + self.tile_col.nbytes

    def validate(self) -> None:
        """Raise UserError (naming the array or level) unless the arrays are a well-formed encoding: every
        index a kernel reads stays inside its table, tile grid and value buffer."""
        if min(self.shape) < 1 or min(self.tile) < 1:
            raise UserError(f"shape {list(self.shape)} and tile {list(self.tile)}: expected positive sizes")
        check_layer_size(self.shape, self.tile, "the layer")
        tile_size = self.tile[0] * self.tile[1]
        if not self.levels or not 1 <= self.n_chains <= MAX_CHAINS:
            n_chains = self.n_chains if self.levels else 0
            raise UserError(f"{len(self.levels)} levels of {n_chains} chains (expected 1 to {MAX_CHAINS})")
        for name, array in (("tile_run_ptr", self.tile_run_ptr), ("tile_col", self.tile_col)):
            if array.ndim != 1 or array.dtype.kind not in "ui":
                raise UserError(
                    f"{name}: expected a 1-D array of integers, got {array.dtype}{list(array.shape)}"
                )
        grid_rows, grid_cols = -(-self.shape[0] // self.tile[0]), -(-self.shape[1] // self.tile[1])
        run_ptr = self.tile_run_ptr.astype(np.int64)
        if len(run_ptr) != grid_rows * self.n_chains + 1:
            raise UserError(
                f"tile_run_ptr: has {len(run_ptr)} entries, expected {grid_rows * self.n_chains + 1} "
                f"({grid_rows} tile rows x {self.n_chains} chains + 1)"
            )
        if run_ptr[0] != 0 or run_ptr[-1] != self.n_tiles or np.any(np.diff(run_ptr) < 0):
            raise UserError(
                f"tile_run_ptr: expected counts rising from 0 to the {self.n_tiles} tiles of tile_col"
            )
        columns = self.tile_col.astype(np.int64)
        if self.n_tiles and (columns.min() < 0 or columns.max() >= grid_cols):
            raise UserError(f"tile_col: tile columns must be in [0, {grid_cols}), the grid's columns")
        if len(np.unique(self.tile_rows() * grid_cols + columns)) != self.n_tiles:
            raise UserError("tile_col: a tile is listed twice")
        for level, encoding in enumerate(self.levels):
            at = f"level {level}"
            table, chains = encoding.pattern_table, encoding.chain_pattern
            if table.ndim != 2 or len(table) < 1 or encoding.nnz > tile_size:
                raise UserError(
                    f"{at}: pattern_table is {list(table.shape)}, expected [patterns, 0..{tile_size}]"
                )
            if np.any((table < 0) | (table >= tile_size)):
                raise UserError(f"{at}: pattern_table: in-tile positions must be in [0, {tile_size})")
            if len(chains) != self.n_chains or np.any((chains < 0) | (chains >= len(table))):
                raise UserError(
                    f"{at}: chain_pattern: expected {self.n_chains} pattern ids in [0, {len(table)})"
                )
            if not 0 <= encoding.buffer < len(self.values):
                raise UserError(f"{at}: reads value buffer {encoding.buffer} of {len(self.values)}")
        cuts = self.kept_level_cuts
        if cuts is not None and (len(self.levels) != 1 or (cuts[-1] if cuts else 0) != self.levels[0].nnz):
            raise UserError(
                f"value sections end at {cuts[-1:]}, not at the level's {self.levels[0].nnz} values"
            )
        for index, buffer in enumerate(self.values):
            widest = max((lv.nnz for lv in self.levels if lv.buffer == index), default=0)
            if buffer.ndim != 1 or buffer.dtype != self.value_dtype or len(buffer) != self.n_tiles * widest:
                raise UserError(
                    f"value buffer {index}: is {buffer.dtype}{list(buffer.shape)}, expected {self.value_dtype}"
                    f"[{self.n_tiles * widest}] ({self.n_tiles} tiles x {widest} values)"
                )
            finite_array(buffer, f"value buffer {index}")
        if self.scale is not None:
            scale = self.scale
            if scale.shape != (self.shape[0],) or scale.dtype != np.float32:
                raise UserError(
                    f"scale: is {scale.dtype}{list(scale.shape)}, expected float32[{self.shape[0]}] (one per "
                    "output channel)"
                )
            finite_array(scale, "scale")
            if np.any(scale <= 0):
                raise UserError(f"scale: channel {int(np.argmax(scale <= 0))} has a scale <= 0")

    def dense_weight(self, level: int) -> np.ndarray:
        """float32 `shape`: the weight this level computes with (zeros where pruned; int8 values times
        their channel's scale)."""
        rows, cols = self.tile
        grid_rows, grid_cols = self.grid
        encoding = self.levels[level]
        values = self.level_values(level)
        tiles = np.zeros((grid_rows, grid_cols, rows * cols), dtype=np.float32)
        positions = encoding.pattern_table[self.tile_pattern(level)]  # [T, nnz]
        tiles[self.tile_rows()[:, None], self.tile_col.astype(np.int64)[:, None], positions] = values
        dense = tiles.reshape(grid_rows, grid_cols, rows, cols).transpose(0, 2, 1, 3)
        weight = dense.reshape(grid_rows * rows, grid_cols * cols)[: self.shape[0], : self.shape[1]]
        return weight if self.scale is None else weight * self.scale[:, None]


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


def quantize_layer(weight: np.ndarray, plan: LayerPlan) -> Quantized:
    """`weight` (torch `[out, in]`) as int8 per output channel, scaled by the weights that some level keeps.
    An all-zero output channel is allowed here: block pruning zeroes whole rows of tiles, so a pruned model's
    planned layers have them by design (26 in one searched minilm-l6 layer)."""
    kept = np.logical_or.reduce([plan.mask(level) for level in range(len(plan.levels))])
    return quantize_channels(weight, f"layer {plan.name}", kept=kept, zero_channels=True)


def encode_layer(weight: np.ndarray, plan: LayerPlan, weights: WeightType = "float32") -> EncodedLayer:
    """Encode `weight` (float, torch `[out, in]`) under `plan`, its values as `weights`. Masked-out weights
    are dropped."""
    if tuple(weight.shape) != tuple(plan.shape):
        raise UserError(
            f"plan layer {plan.name}: shape {list(plan.shape)} but the weight is {list(weight.shape)}"
        )
    quantized = quantize_layer(weight, plan) if weights == "int8" else None
    stored = np.asarray(weight, np.float32) if quantized is None else quantized.values
    rows, cols = plan.tile
    grid_rows, grid_cols = plan.grid
    padded = np.zeros((grid_rows * rows, grid_cols * cols), dtype=stored.dtype)
    padded[: plan.shape[0], : plan.shape[1]] = stored
    tiles = (
        padded.reshape(grid_rows, rows, grid_cols, cols)
        .transpose(0, 2, 1, 3)
        .reshape(grid_rows, grid_cols, -1)
    )

    kept = plan.kept_tiles
    tile_r, tile_c = np.nonzero(kept)  # row-major: ascending column within each row
    tile_values = tiles[tile_r, tile_c]  # [T, rows*cols]
    flat_sets = [level.patterns.reshape(len(level.patterns), -1) for level in plan.levels]
    n_levels = len(plan.levels)
    ids = np.stack([level.tile_patterns[tile_r, tile_c] for level in plan.levels], axis=1).astype(np.int64)
    # A tile's chain (its pattern ids at every level) fixes its masks, hence its value order and its
    # pattern at each level. A plan without kept tiles still has one (empty) chain.
    chains, chain_of_tile = np.unique(ids, axis=0, return_inverse=True)
    chain_of_tile = chain_of_tile.reshape(-1)
    if len(chains) > MAX_CHAINS:
        raise UserError(
            f"plan layer {plan.name}: {len(chains)} distinct chains of patterns across levels exceed "
            f"{MAX_CHAINS}; make the pattern sets nested family by family"
        )

    if not len(chains):  # every tile pruned: one empty chain keeps the arrays well-formed
        chains = np.zeros((1, n_levels), dtype=np.int64)
        orders = [np.arange(plan.levels[0].nonzeros_per_tile)]
    else:
        orders = [_chain_order([flat_sets[lv][chain[lv]] for lv in range(n_levels)]) for chain in chains]
    if plan.is_nested():
        chain_orders = np.array(orders, dtype=np.int64).reshape(len(chains), plan.levels[0].nonzeros_per_tile)
        values = [np.take_along_axis(tile_values, chain_orders[chain_of_tile], axis=1)]
        levels = []
        for level in range(n_levels):
            # Level l's table has one row per distinct chain suffix (level l down to the sparsest).
            _, first_chain, chain_suffix = np.unique(
                chains[:, level:], axis=0, return_index=True, return_inverse=True
            )
            nnz = plan.levels[level].nonzeros_per_tile
            table = chain_orders[first_chain, :nnz].astype(np.int16).reshape(len(first_chain), nnz)
            levels.append(LevelEncoding(0, table, chain_suffix.reshape(-1).astype(np.int64)))
    else:
        values, levels = [], []
        for level in range(n_levels):
            table = np.stack([np.flatnonzero(mask).astype(np.int16) for mask in flat_sets[level]])
            order = table[ids[:, level]].astype(np.int64)
            values.append(np.take_along_axis(tile_values, order, axis=1))
            levels.append(LevelEncoding(level, table, chains[:, level].copy()))

    # Group each tile row's tiles by chain; the stable sort keeps columns ascending within a run.
    run_of_tile = tile_r.astype(np.int64) * len(chains) + chain_of_tile
    by_run = np.argsort(run_of_tile, kind="stable")
    counts = np.bincount(run_of_tile, minlength=grid_rows * len(chains))
    run_ptr = np.concatenate([[0], np.cumsum(counts)])
    return EncodedLayer(
        name=plan.name,
        shape=plan.shape,
        tile=plan.tile,
        tile_run_ptr=run_ptr.astype(_index_dtype(int(run_ptr[-1]))),
        tile_col=tile_c[by_run].astype(_index_dtype(grid_cols - 1)),
        values=[
            to_sections(buffer[by_run], sorted({lv.nnz for lv in levels if lv.buffer == index} - {0}))
            for index, buffer in enumerate(values)
        ],
        levels=levels,
        scale=None if quantized is None else quantized.scale,
    )
