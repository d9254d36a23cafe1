"""The sparsity plan: which tiles BP keeps and, per DVFS level, each layer's pattern set and tile patterns.

The plan is the contract between pruning/search (which write it) and encoding/compiling (which read it).
On disk it is JSON, format `rt3c-plan` version 1 (documented in docs/PLAN.md):

    {
      "format": "rt3c-plan", "version": 1, "model": "bert-tiny",
      "levels": [{"name": "L0", "frequency_khz": 1400000}, ...],       # densest first
      "layers": {
        "bert.encoder.layer.0.attention.self.query.weight": {        # torch parameter name
          "shape": [64, 64],                                         # torch [out, in]
          "tile": [4, 4],                                            # [rows, cols] over [out, in]
          "levels": [                                                # one entry per plan level
            {"patterns": ["1101/0110/1011/0110", ...],               # k masks, rows split by '/'
             "tiles": ["01.3", "2.10", ...]}                         # a string per tile row: '.' = pruned
          ]                                                          # by BP, else the pattern id (base 36)
        }
      }
    }

Rules (checked by `Plan.load` / `Plan.validate`): shapes that are not multiples of the tile are padded
(the tile grid is ceil(out/rows) x ceil(in/cols)); BP pruning is the same at every level; every pattern of
one level's set has the same number of ones; a pattern id must exist in its level's set. Plans are usually
nested (each tile's mask at a sparser level is a subset of its mask at the denser one); `is_nested` says.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rt3c.core.checks import UNREADABLE_JSON, integer
from rt3c.core.errors import UserError
from rt3c.core.files import atomic_output
from rt3c.core.plan_limits import (
    MAX_LAYER_ELEMENTS,
    MAX_LEVELS,
    MAX_TILE_ELEMENTS,
    check_layer_size,
    validate_level,
)
from rt3c.core.plan_text import DIGITS, PRUNED, pattern_from_text, pattern_to_text, row_from_text, row_to_text

PLAN_FORMAT = "rt3c-plan"
PLAN_VERSION = 1
MAX_PATTERNS = len(DIGITS)
SHARED_USE = "#"
"""Joins a shared weight's layer name and the number of its further use: `NAME#1` (docs/PLAN.md)."""


@dataclass(frozen=True)
class Level:
    """One DVFS level. `frequency_khz` is the lowest CPU frequency at which this level is used."""

    name: str
    frequency_khz: int | None = None


@dataclass
class LayerLevel:
    """One layer at one level: `patterns` bool [k, rows, cols]; `tile_patterns` int [R, C], -1 = pruned."""

    patterns: np.ndarray
    tile_patterns: np.ndarray

    @property
    def nonzeros_per_tile(self) -> int:
        return int(self.patterns[0].sum())


@dataclass
class LayerPlan:
    """The plan of one linear layer, in torch orientation: weight `[out, in]`, tiles `[rows, cols]`."""

    name: str
    shape: tuple[int, int]
    tile: tuple[int, int]
    levels: list[LayerLevel]

    @property
    def grid(self) -> tuple[int, int]:
        """Tile rows and tile columns after padding the weight up to a multiple of the tile."""
        return math.ceil(self.shape[0] / self.tile[0]), math.ceil(self.shape[1] / self.tile[1])

    @property
    def kept_tiles(self) -> np.ndarray:
        """bool [R, C]: the tiles that block pruning keeps (the same at every level)."""
        return self.levels[0].tile_patterns != PRUNED

    def tile_masks(self, level: int) -> np.ndarray:
        """bool [R, C, rows, cols]: each tile's mask at `level` (all False for pruned tiles)."""
        plan_level = self.levels[level]
        ids = np.where(plan_level.tile_patterns == PRUNED, 0, plan_level.tile_patterns)
        return plan_level.patterns[ids] & self.kept_tiles[:, :, None, None]

    def mask(self, level: int) -> np.ndarray:
        """bool `shape`: which weights survive at `level` (padding cropped away)."""
        rows, cols = self.tile
        grid_rows, grid_cols = self.grid
        tiled = self.tile_masks(level).transpose(0, 2, 1, 3).reshape(grid_rows * rows, grid_cols * cols)
        return tiled[: self.shape[0], : self.shape[1]]

    def is_nested(self) -> bool:
        """True when every tile's mask at each sparser level is a subset of its mask one level denser."""
        masks = [self.tile_masks(level) for level in range(len(self.levels))]
        return all(not np.any(sparse & ~dense) for dense, sparse in itertools.pairwise(masks))

    def sparsity(self, level: int) -> float:
        """Fraction of the layer's (unpadded) weights removed at `level`."""
        return 1.0 - float(self.mask(level).sum()) / (self.shape[0] * self.shape[1])

    def validate(self, n_levels: int) -> None:
        """Raise UserError naming this layer if its arrays break the plan rules."""
        where = f"plan layer {self.name}"
        if len(self.shape) != 2 or min(self.shape) < 1 or len(self.tile) != 2 or min(self.tile) < 1:
            raise UserError(
                f"{where}: shape {self.shape} and tile {self.tile} must be two positive integers each"
            )
        check_layer_size(self.shape, self.tile, where)
        if len(self.levels) != n_levels:
            raise UserError(f"{where}: has {len(self.levels)} levels, the plan has {n_levels}")
        for index, plan_level in enumerate(self.levels):
            at = f"{where} level {index}"
            patterns, ids = plan_level.patterns, plan_level.tile_patterns
            if (
                patterns.ndim != 3
                or patterns.shape[1:] != self.tile
                or not 1 <= len(patterns) <= MAX_PATTERNS
            ):
                raise UserError(
                    f"{at}: patterns have shape {patterns.shape}, expected [1..{MAX_PATTERNS}, {self.tile[0]}, {self.tile[1]}]"
                )
            counts = patterns.reshape(len(patterns), -1).sum(axis=1)
            if np.any(counts != counts[0]):
                raise UserError(
                    f"{at}: the patterns of a set must share one nonzero count, got {counts.tolist()}"
                )
            if ids.shape != self.grid:
                raise UserError(
                    f"{at}: tile grid is {ids.shape}, expected {self.grid} for shape {self.shape}"
                )
            if np.any((ids < PRUNED) | (ids >= len(patterns))):
                bad = int(ids[(ids < PRUNED) | (ids >= len(patterns))][0])
                raise UserError(f"{at}: pattern id {bad} is outside the set of {len(patterns)} patterns")
            if not np.array_equal(ids == PRUNED, self.levels[0].tile_patterns == PRUNED):
                raise UserError(
                    f"{at}: block pruning differs from level 0 (BP must be the same at every level)"
                )


@dataclass
class Plan:
    levels: list[Level]
    layers: dict[str, LayerPlan]
    model: str | None = None
    metadata: dict[str, object] = field(default_factory=dict)

    def validate(self) -> None:
        if not 1 <= len(self.levels) <= MAX_LEVELS:
            raise UserError(f"plan: has {len(self.levels)} levels, expected 1 to {MAX_LEVELS}")
        if not self.layers:
            raise UserError("plan: has no layers")
        seen: set[str] = set()
        for index, level in enumerate(self.levels):
            validate_level(index, level, seen)
        for layer in self.layers.values():
            layer.validate(len(self.levels))

    def check_shapes(self, shapes: dict[str, tuple[int, int]], source: str) -> None:
        """Raise UserError unless the plan's layers are exactly `shapes` (torch `[out, in]`) of `source`."""
        missing = sorted(set(self.layers) - set(shapes))
        if missing:
            raise UserError(f"plan layer {missing[0]}: not a linear layer of {source}")
        for name, layer in self.layers.items():
            if tuple(shapes[name]) != tuple(layer.shape):
                raise UserError(
                    f"plan layer {name}: shape {list(layer.shape)} but {source} has {list(shapes[name])}"
                )

    def is_nested(self) -> bool:
        return all(layer.is_nested() for layer in self.layers.values())

    def with_shared_uses(self, names: Iterable[str]) -> Plan:
        """This plan with each further use of a shared weight among `names` (`NAME#N`) that it does not list
        given the entry of `NAME`: a plan from `rt3c prune` names each torch parameter once."""
        shared = {}
        for name in names:
            base, mark, _ = name.rpartition(SHARED_USE)
            if mark and name not in self.layers and base in self.layers:
                shared[name] = dataclasses.replace(self.layers[base], name=name)
        return dataclasses.replace(self, layers={**self.layers, **shared}) if shared else self

    def sparsity(self, level: int) -> float:
        """Fraction of all planned layers' weights removed at `level`."""
        total = sum(layer.shape[0] * layer.shape[1] for layer in self.layers.values())
        kept = sum(int(layer.mask(level).sum()) for layer in self.layers.values())
        return 1.0 - kept / total

    def level_for_frequency(self, khz: int) -> int:
        """The densest level whose `frequency_khz` is at or below `khz`; the sparsest if none is."""
        for index, level in enumerate(self.levels):
            if level.frequency_khz is not None and level.frequency_khz <= khz:
                return index
        return len(self.levels) - 1

    # -- JSON ---------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "metadata": self.metadata,
            "levels": [
                {
                    "name": level.name,
                    **({"frequency_khz": level.frequency_khz} if level.frequency_khz else {}),
                }
                for level in self.levels
            ],
            "layers": {
                name: {
                    "shape": list(layer.shape),
                    "tile": list(layer.tile),
                    "levels": [
                        {
                            "patterns": [pattern_to_text(p) for p in plan_level.patterns],
                            "tiles": [row_to_text(row) for row in plan_level.tile_patterns],
                        }
                        for plan_level in layer.levels
                    ],
                }
                for name, layer in self.layers.items()
            },
        }

    def save(self, path: Path) -> None:
        """Validate, then write atomically (a failed save leaves no file behind)."""
        self.validate()
        text = json.dumps(self.to_json(), indent=1) + "\n"
        with atomic_output(Path(path)) as tmp:
            tmp.write_text(text)

    @classmethod
    def from_json(cls, data: object, source: str = "plan") -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise UserError(f'{source}: not an rt3c plan (expected "format": "{PLAN_FORMAT}")')
        if data.get("version") != PLAN_VERSION:
            raise UserError(
                f"{source}: plan version {data.get('version')!r} is not supported (expected {PLAN_VERSION})"
            )
        try:
            if not isinstance(data["levels"], list) or not all(isinstance(x, dict) for x in data["levels"]):
                raise TypeError("levels: expected a list of objects")
            levels = [Level(level["name"], level.get("frequency_khz")) for level in data["levels"]]
            layer_entries = data["layers"]
            metadata = data.get("metadata") or {}
            if not isinstance(layer_entries, dict) or not isinstance(metadata, dict):
                raise TypeError("layers and metadata: expected objects")
        except (KeyError, TypeError) as exc:
            raise UserError(f"{source}: malformed plan ({type(exc).__name__}: {exc})") from None
        if len(levels) > MAX_LEVELS:
            raise UserError(f"{source}: plan: has {len(levels)} levels, expected 1 to {MAX_LEVELS}")
        layers = {name: _layer_from_json(name, entry, source) for name, entry in layer_entries.items()}
        plan = cls(levels, layers, data.get("model"), metadata)
        try:
            plan.validate()
        except UserError as exc:
            raise UserError(f"{source}: {exc}") from None
        return plan

    @classmethod
    def load(cls, path: Path) -> Plan:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: no such plan file") from None
        except UNREADABLE_JSON as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, str(path))


def _layer_from_json(name: str, entry: dict[str, Any], source: str) -> LayerPlan:
    where = f"{source}: plan layer {name}"
    try:
        tile = _pair(entry["tile"], f"{where}: tile", MAX_TILE_ELEMENTS)
        shape = _pair(entry["shape"], f"{where}: shape", MAX_LAYER_ELEMENTS)
        check_layer_size(shape, tile, where)
        if not isinstance(entry["levels"], list) or len(entry["levels"]) > MAX_LEVELS:
            raise ValueError(f"levels: expected a list of at most {MAX_LEVELS} levels")
        levels = []
        for index, level in enumerate(entry["levels"]):
            patterns = [pattern_from_text(text, name) for text in level["patterns"]]
            for number, pattern in enumerate(patterns):
                if pattern.shape != tile:
                    raise ValueError(
                        f"level {index} pattern {number} is {pattern.shape[0]}x{pattern.shape[1]}, the tile is {tile[0]}x{tile[1]}"
                    )
            rows = [row_from_text(text, name) for text in level["tiles"]]
            if len({len(row) for row in rows}) > 1:
                raise ValueError(
                    f"level {index}: tile rows have different lengths (tile grid is not rectangular)"
                )
            levels.append(LayerLevel(np.stack(patterns), np.stack(rows)))
        return LayerPlan(name, shape, tile, levels)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise UserError(f"{where}: malformed ({type(exc).__name__}: {exc})") from None


def _pair(value: object, where: str, high: int) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise UserError(f"{where}: expected two integers, got {value!r:.40}")
    return integer(value[0], f"{where}[0]", 1, high), integer(value[1], f"{where}[1]", 1, high)
