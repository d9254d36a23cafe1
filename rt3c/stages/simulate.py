"""`rt3c simulate DIR [--board B] [--trace T]`: inferences per battery charge of a searched plan.

Reads DIR/latency.json (written by `rt3c search`): the cost of the dense model and of each level of the
best plan, in the unit of its source (instructions counted under qemu, or host seconds). Cycles are
instructions x the board's `cycles_per_instruction`, or host seconds x the host clock recorded at
measurement; then `rt3c.core.battery.simulate` compares the dense model at the top frequency, the dense model
following the trace, the rt3c levels following the trace, and the densest level without switching.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from rt3c.core.battery import RT3_DEFAULT_TRACE, Simulation, load_trace, simulate
from rt3c.core.boards import BOARD_QUANTITY_LIMIT, Board, load_board
from rt3c.core.checks import UNREADABLE_JSON, real_number
from rt3c.core.errors import SettingError, UserError
from rt3c.core.progress import stdout
from rt3c.stages.latency.units import cycles_per_unit

RT3_CLAIMED_RATIO = 4.0
UNITS_LIMIT = 1e18
"""Most instructions (or host seconds) one inference may cost in latency.json: times the board's numbers
(each at most BOARD_QUANTITY_LIMIT) the simulation stays finite."""


def read_json(directory: Path, name: str, made_by: str) -> dict:
    """DIR/name as JSON, or a one-line error naming the file and the command that makes it."""
    path = Path(directory) / name
    if not Path(directory).is_dir():
        raise UserError(f"{directory}: no such directory (make it with `{made_by}`)")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: missing (make it with `{made_by}`)") from None
    except UNREADABLE_JSON as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None


def level_cycles(latency: dict, board: Board, source_path: str) -> tuple[float, list[float]]:
    """Cycles of one inference of the dense model and of each plan level on `board`."""
    try:
        target, source, host_hz = latency["target"], latency["source"], latency.get("host_hz")
        dense_units = real_number(
            latency["dense_units"], f"{source_path}: dense_units", low=0.0, high=UNITS_LIMIT, low_open=True
        )
        units = [
            real_number(
                level["units"],
                f"{source_path}: levels[{index}].units",
                low=0.0,
                high=UNITS_LIMIT,
                low_open=True,
            )
            for index, level in enumerate(latency["levels"])
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source_path}: malformed latency file (missing or bad {exc})") from None
    if host_hz is not None:
        host_hz = real_number(
            host_hz, f"{source_path}: host_hz", low=0.0, high=BOARD_QUANTITY_LIMIT, low_open=True
        )
    if len(units) != len(board.levels):
        raise SettingError(
            "board", f"has {len(board.levels)} levels, but {source_path} has {len(units)}", board.name
        )
    if board.target != target:
        raise SettingError(
            "board", f"targets {board.target}, but {source_path} was measured for {target}", board.name
        )
    per_unit = cycles_per_unit(source, board.cycles_per_instruction, host_hz)
    return dense_units * per_unit, [u * per_unit for u in units]


def searched_board(directory: Path, board_ref: str | None) -> Board:
    """The given board, or the one the search in `directory` was made for (its copy `DIR/board.toml`)."""
    if board_ref is not None:
        return load_board(board_ref)
    copy = Path(directory) / "board.toml"
    if not copy.is_file():
        raise UserError(f"{copy}: missing (name the board, or make DIR with `rt3c search --out DIR`)")
    return load_board(copy)


def simulate_dir(directory: Path, board_ref: str | None = None, trace: Path | None = None) -> Simulation:
    latency = read_json(directory, "latency.json", "rt3c search --out DIR")
    board = searched_board(directory, board_ref)
    dense, levels = level_cycles(latency, board, str(Path(directory) / "latency.json"))
    if trace is not None:
        fractions = load_trace(trace, board)
    elif len(board.levels) == len(RT3_DEFAULT_TRACE):
        fractions = RT3_DEFAULT_TRACE
    else:
        raise SettingError(
            "board", f"has {len(board.levels)} levels; RT3's default trace is for 3, give a trace", board.name
        )
    return simulate(board, dense, levels, fractions)


def print_simulation(sim: Simulation) -> None:
    baseline = sim.scenarios[0].inferences_per_charge
    table = Table(
        "scenario",
        "inferences / charge",
        "mJ / inference",
        "deadline misses / charge",
        "vs dense at top",
        title=f"{sim.board}, trace {' / '.join(f'{100 * phi:g}%' for phi in sim.trace)} of time per level",
    )
    for scenario in sim.scenarios:
        table.add_row(
            scenario.name,
            f"{scenario.inferences_per_charge:,.0f}",
            f"{scenario.joules_per_inference * 1e3:.3f}",
            f"{scenario.deadline_misses_per_charge:,.0f} ({100 * scenario.miss_fraction:.1f}%)",
            f"{scenario.inferences_per_charge / baseline:.2f}x",
        )
    stdout.print(table)
    stuck = sim.scenarios[-1]
    verdict = "above" if sim.battery_ratio > RT3_CLAIMED_RATIO else "below"
    stdout.print(
        f"battery ratio (rt3c levels following the trace / dense at the top frequency): "
        f"{sim.battery_ratio:.2f}x ({verdict} RT3's claimed {RT3_CLAIMED_RATIO:g}x)"
    )
    stdout.print(
        f"deadline misses if the levels did not switch (densest level throughout): "
        f"{stuck.deadline_misses_per_charge:,.0f} per charge ({100 * stuck.miss_fraction:.1f}% of inferences)"
    )
