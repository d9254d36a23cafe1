"""The limits a plan and an encoded model keep: each bound is the type or the memory a value ends up in
(uint32_t kHz in the C runtime, int16 in-tile positions in the format, a layer's masks in memory), and is
checked before anything of that size is made. `rt3c.core.plan` checks plans with them, the encoded
format and its reader check encoded layers with them, and boards their levels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rt3c.core.errors import SettingError, UserError

if TYPE_CHECKING:
    from rt3c.core.plan import Level

MAX_FREQUENCY_KHZ = 2**32 - 1
"""The runtime stores each level's frequency as a uint32_t (rt3_on_frequency's argument)."""
MAX_LEVELS = 16
"""DVFS levels of a plan or board: each is a kernel table in flash, and boards have a handful."""
MAX_TILE_ELEMENTS = 2**15
"""The encoded format stores in-tile positions as int16 (docs/FORMAT.md)."""
MAX_LAYER_ELEMENTS = 2**28
"""Weights of one layer after padding to whole tiles (1 GiB of float32): checked before any mask over the
layer is allocated, so a plan cannot claim a size that exhausts memory."""


def validate_level(index: int, level: Level, seen: set[str]) -> None:
    """Level names key the levels in encoded models (joined by commas) and frequencies end up in the C runtime
    as uint32_t kHz, so both are checked as the types they become, not as whatever JSON held."""
    where = f"levels[{index}]"
    if not isinstance(level.name, str) or not level.name or "," in level.name:
        raise UserError(f"{where}.name: expected a non-empty string without commas, got {level.name!r:.80}")
    if level.name in seen:
        raise UserError(f"{where}.name: {level.name!r:.80} names two levels")
    seen.add(level.name)
    khz = level.frequency_khz
    # bool is an int subclass, and JSON's NaN, 1e300 and 1400000.0 arrive as floats: all refused.
    if khz is not None and (type(khz) is not int or not 1 <= khz <= MAX_FREQUENCY_KHZ):
        raise UserError(
            f"{where}.frequency_khz: expected an integer in [1, {MAX_FREQUENCY_KHZ}] (kHz) or no value, got {khz!r:.80}"
        )


def check_layer_size(shape: tuple[int, int], tile: tuple[int, int], where: str) -> None:
    """Refuse a tile or a padded layer too large for the encoded format (MAX_TILE_ELEMENTS) or memory
    (MAX_LAYER_ELEMENTS), before anything of that size is allocated."""
    if tile[0] * tile[1] > MAX_TILE_ELEMENTS:
        raise UserError(f"{where}: tile {tile[0]}x{tile[1]} has more than {MAX_TILE_ELEMENTS} elements")
    padded = -(-shape[0] // tile[0]) * tile[0] * -(-shape[1] // tile[1]) * tile[1]
    if padded > MAX_LAYER_ELEMENTS:
        raise UserError(
            f"{where}: shape {list(shape)} in {tile[0]}x{tile[1]} tiles is {padded} weights, "
            f"more than {MAX_LAYER_ELEMENTS}"
        )


def check_tile_fits(tile: tuple[int, int], shapes: Mapping[str, Sequence[int]]) -> None:
    """A tile may be padded but not exceed a layer's weight (`shapes`: by layer, its weight's shape): tiles
    larger than every layer only pad it with zeros, and cost time and memory in proportion. `rt3c plan` and
    `rt3c prune` refuse them alike, before any work."""
    for name, shape in shapes.items():
        if tile[0] > shape[0] or tile[1] > shape[1]:
            raise SettingError(
                "tile",
                f"larger than layer {name} {list(shape)}; a tile may be padded but not exceed the weight",
                f"{tile[0]}x{tile[1]}",
            )
