"""What the inputs of one compile must agree on, checked before any work: the levels' frequencies (from
`frequencies_khz`, a board or the plan; falling from level to level) and, for an encoded model given with
its plan, that plan being the model's encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rt3c.core.boards import load_board
from rt3c.core.errors import SettingError, UserError
from rt3c.core.plan import Plan
from rt3c.core.plan_limits import MAX_FREQUENCY_KHZ
from rt3c.core.sparse_format import encode_layer
from rt3c.stages.encoded_model import EncodedModel


class MissingFrequenciesError(UserError):
    """Levels of a several-level model without a frequency; `render(how)` says how to give them (the CLI
    names its options)."""

    def __init__(self, where: str, missing: list[str]) -> None:
        self.where = where
        self.missing = missing
        super().__init__(self.render("a board or frequencies_khz (kHz, one per level, densest first)"))

    def render(self, how: str) -> str:
        many = len(self.missing) > 1
        return (
            f"{self.where}: level{'s' if many else ''} {','.join(self.missing)} {'have' if many else 'has'} "
            f"no frequency, so rt3_on_frequency could not choose a level; give the frequencies with {how}"
        )


def level_frequencies(
    level_names: list[str],
    plan: Plan | None,
    plan_path: Path | None,
    board: str | None,
    frequencies_khz: list[int] | None,
    source: str,
) -> list[int]:
    """Per level, the lowest CPU frequency (kHz) at which rt3_on_frequency picks it.

    `frequencies_khz` wins, then `board`, then the plan's `frequency_khz`. A model of several levels
    without them is refused: the runtime's table would hold zeros, and rt3_on_frequency would pick the
    same level at every frequency. The frequencies must fall from level to level (densest first), or
    some level could never be picked. A one-level model runs at every frequency (0: no lower bound).
    """
    if board is not None and frequencies_khz is not None:
        raise UserError("board and frequencies_khz: give the levels' frequencies with one of them")
    count = len(level_names)
    where = str(plan_path) if plan_path is not None else source

    def fault(problem: str) -> UserError:
        """The error in the source the frequencies came from: the setting, the board or the plan."""
        if frequencies_khz is not None:
            return SettingError("frequencies_khz", problem, ",".join(map(str, frequencies_khz)))
        if board is not None:
            return SettingError("board", problem, board)
        return UserError(f"{where}: {problem}")

    if frequencies_khz is not None:
        given = list(frequencies_khz)
        if len(given) != count:
            raise fault(f"{len(given)} values for the model's {count} levels ({','.join(level_names)})")
    elif board is not None:
        given = [level.frequency_khz for level in load_board(board).levels]
        if len(given) != count:
            raise fault(f"has {len(given)} frequency levels, the model has {count}")
    else:
        by_name = {level.name: level.frequency_khz for level in plan.levels} if plan is not None else {}
        planned = [by_name.get(name) for name in level_names]
        if count == 1:
            return [planned[0] or 0]
        missing = [name for name, khz in zip(level_names, planned, strict=True) if khz is None]
        if missing:
            raise MissingFrequenciesError(where, missing)
        given = [int(khz) for khz in planned if khz is not None]
    for index, khz in enumerate(given):
        if isinstance(khz, bool) or not isinstance(khz, int) or not 1 <= khz <= MAX_FREQUENCY_KHZ:
            raise fault(
                f"level {index}: expected a frequency in [1, {MAX_FREQUENCY_KHZ}] kHz, got {khz!r:.40}"
            )
        if index and khz >= given[index - 1]:
            raise fault(
                f"level {index} ({khz} kHz) is not below level {index - 1} ({given[index - 1]} kHz); "
                "the frequencies must fall from the densest level to the sparsest, or a level is never chosen"
            )
    return given


def check_plan_matches(plan: Plan, plan_path: Path, encoded: EncodedModel) -> None:
    """An encoded model compiled with a plan (for the levels' frequencies) must be that plan's encoding:
    the same layers, levels (all of them, or the one encoding at one level kept), tiles, kept tiles and pattern
    ids. The first difference is named."""
    encoded_path, layers = encoded.path, encoded.layers
    plan = plan.with_shared_uses(layers)
    plan.check_shapes({name: layer.shape for name, layer in layers.items()}, str(encoded_path))
    unplanned = sorted(set(layers) - set(plan.layers))
    if unplanned:
        raise UserError(f"{plan_path}: has no layer {unplanned[0]}, which {encoded_path} encodes")
    plan_levels = [level.name for level in plan.levels]
    model_levels = encoded.level_names
    unknown = [name for name in model_levels if name not in plan_levels]
    if unknown or (len(model_levels) > 1 and model_levels != plan_levels):
        raise UserError(
            f"{plan_path}: has levels {','.join(plan_levels)}, but {encoded_path} has "
            + (f"level {unknown[0]}" if unknown else f"levels {','.join(model_levels)}")
        )
    for name, layer in sorted(layers.items()):
        where = f"{plan_path}: layer {name}"
        planned = encode_layer(np.zeros(layer.shape, np.float32), plan.layers[name])
        if tuple(planned.tile) != tuple(layer.tile):
            raise UserError(
                f"{where}: tiles {planned.tile[0]}x{planned.tile[1]}, but {encoded_path} encodes "
                f"{layer.tile[0]}x{layer.tile[1]}"
            )
        for model_level, level_name in enumerate(model_levels):
            expected = planned.levels[plan_levels.index(level_name)]
            actual = layer.levels[model_level]
            same_ids = (
                np.array_equal(planned.tile_col, layer.tile_col)
                and np.array_equal(planned.tile_run_ptr, layer.tile_run_ptr)
                and np.array_equal(expected.pattern_table, actual.pattern_table)
                and np.array_equal(expected.chain_pattern, actual.chain_pattern)
            )
            if not same_ids:
                raise UserError(
                    f"{where}: level {level_name}: other kept tiles or pattern ids than {encoded_path} encodes"
                )
