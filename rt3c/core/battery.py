"""Battery-life simulation: inferences per charge when the CPU follows a DVFS trace.

Model (RT3 §5): the device runs inferences back to back; at board level i it draws P_i = C f_i V_i^2 + static
and an inference of a model that needs `cycles` takes cycles / f_i. A trace gives the fraction of time
phi_i spent at each level. Over a charge of E joules the device spends phi_i of its time at level i, so it
completes E * sum_i(phi_i / t_i) / sum_i(phi_i * P_i) inferences. An inference misses its deadline when
t_i exceeds level i's latency constraint.

Scenarios compared: the dense model pinned at the top frequency (the baseline), the dense model following
the trace, the rt3c levels following the trace (plan level i at board level i), and the densest rt3c level
following the trace without switching (how many deadlines are missed when levels do not switch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from rt3c.core.boards import Board
from rt3c.core.checks import real_number
from rt3c.core.errors import SettingError, UserError

TRACE_SECONDS_LIMIT = 1e12
"""Longest time one trace line may give (31,700 years): the sum of the lines stays finite."""

RT3_DEFAULT_TRACE = (0.5, 0.3, 0.2)


@dataclass(frozen=True)
class Scenario:
    name: str
    inferences_per_charge: float
    joules_per_inference: float
    deadline_misses_per_charge: float

    @property
    def miss_fraction(self) -> float:
        return self.deadline_misses_per_charge / self.inferences_per_charge


@dataclass(frozen=True)
class Simulation:
    board: str
    trace: tuple[float, ...]
    scenarios: tuple[Scenario, ...]

    @property
    def battery_ratio(self) -> float:
        """rt3c levels following the trace over the dense model at the top frequency."""
        by_name = {s.name: s for s in self.scenarios}
        return (
            by_name["rt3c levels, trace"].inferences_per_charge
            / by_name["dense, top frequency"].inferences_per_charge
        )

    def to_json(self) -> dict[str, object]:
        return {
            "board": self.board,
            "trace": list(self.trace),
            "battery_ratio": self.battery_ratio,
            "scenarios": [{**asdict(s), "miss_fraction": s.miss_fraction} for s in self.scenarios],
        }


def _scenario(name: str, board: Board, fractions: tuple[float, ...], cycles: list[float]) -> Scenario:
    """`cycles[i]`: cycles of one inference of the model that runs while the CPU is at board level i."""
    rate = 0.0  # inferences per second, averaged over the trace
    miss_rate = 0.0
    power = 0.0
    for level, (phi, level_cycles) in enumerate(zip(fractions, cycles, strict=True)):
        latency = level_cycles / board.levels[level].frequency_hz
        rate += phi / latency
        if latency > board.levels[level].deadline_s:
            miss_rate += phi / latency
        power += phi * board.power_watts(level)
    per_charge = board.battery_joules * rate / power
    return Scenario(
        name, per_charge, board.battery_joules / per_charge, board.battery_joules * miss_rate / power
    )


def simulate(
    board: Board, dense_cycles: float, level_cycles: list[float], trace: tuple[float, ...]
) -> Simulation:
    """Compare the dense model and the rt3c levels on `board` following `trace` (time fraction per level)."""
    n = len(board.levels)
    if len(level_cycles) != n:
        raise UserError(
            f"board {board.name}: has {n} frequency levels but the model has {len(level_cycles)} levels"
        )
    if len(trace) != n or any(phi < 0 for phi in trace) or abs(sum(trace) - 1.0) > 1e-6:
        raise SettingError("trace", f"needs {n} non-negative time fractions summing to 1", list(trace))
    top_only = (1.0,) + (0.0,) * (n - 1)
    scenarios = (
        _scenario("dense, top frequency", board, top_only, [dense_cycles] * n),
        _scenario("dense, trace", board, trace, [dense_cycles] * n),
        _scenario("rt3c levels, trace", board, trace, list(level_cycles)),
        _scenario("rt3c densest level, trace, no switching", board, trace, [level_cycles[0]] * n),
    )
    return Simulation(board.name, tuple(trace), scenarios)


def load_trace(path: Path, board: Board) -> tuple[float, ...]:
    """A DVFS trace file: one `frequency_mhz seconds` pair a line (`#` comments), summed per board level."""
    seconds = [0.0] * len(board.levels)
    by_mhz = {round(level.frequency_hz / 1e6): index for index, level in enumerate(board.levels)}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the trace ({exc})") from None
    for number, line in enumerate(lines, 1):
        fields = line.split("#")[0].replace(",", " ").split()
        if not fields:
            continue
        try:
            mhz_text, duration_text = fields
            mhz_value, duration = float(mhz_text), float(duration_text)
        except ValueError:
            raise UserError(
                f"{path}:{number}: expected 'frequency_mhz seconds', got {line.strip()!r:.80}"
            ) from None
        where = f"{path}:{number}"
        mhz = round(real_number(mhz_value, f"{where}: frequency_mhz", low=0.0))
        duration = real_number(duration, f"{where}: seconds", low=0.0, high=TRACE_SECONDS_LIMIT)
        if mhz not in by_mhz:
            raise UserError(
                f"{where}: {mhz} MHz is not a level of board {board.name} ({', '.join(str(m) for m in by_mhz)})"
            )
        seconds[by_mhz[mhz]] += duration
    total = sum(seconds)
    if total <= 0:
        raise UserError(f"{path}: no time in the trace")
    return tuple(s / total for s in seconds)
