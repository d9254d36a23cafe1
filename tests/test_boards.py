"""Board profiles and the battery-life simulation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rt3c.core.battery import RT3_DEFAULT_TRACE, load_trace, simulate
from rt3c.core.boards import TARGETS, load_board, shipped_boards
from rt3c.core.errors import UserError


def test_shipped_boards_load() -> None:
    assert {"rt3-default", "cortex-a72", "cortex-m4", "cortex-m7"} <= set(shipped_boards())
    for name in shipped_boards():
        board = load_board(name)
        assert board.target in TARGETS
        assert all(
            a.frequency_hz > b.frequency_hz for a, b in zip(board.levels, board.levels[1:], strict=False)
        )
        # Dynamic power falls with f * V^2, so a slower level never draws more.
        powers = [board.power_watts(i) for i in range(len(board.levels))]
        assert powers == sorted(powers, reverse=True)


def test_rt3_default_matches_the_paper() -> None:
    board = load_board("rt3-default")
    assert [level.frequency_khz for level in board.levels] == [1_400_000, 1_000_000, 800_000]
    assert [level.voltage for level in board.levels] == [1.24, 1.06625, 0.9925]
    assert board.battery_joules == 37_800.0
    ratio = board.power_watts(0) / board.power_watts(2)
    assert ratio == pytest.approx((1.4 * 1.24**2) / (0.8 * 0.9925**2))


BASE = """
name = "b"
target = "aarch64"
battery_joules = 100.0
latency_ms = 10
[power]
capacitance_nf = 1.0
[[levels]]
frequency_mhz = 1000
voltage = 1.0
[[levels]]
frequency_mhz = 500
voltage = 0.8
"""


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('target = "aarch64"', 'target = "x86"', "target"),
        ("battery_joules = 100.0", "battery_joules = -1", "battery_joules"),
        ("battery_joules = 100.0", "", "battery_joules"),
        ("capacitance_nf = 1.0", 'capacitance_nf = "big"', "capacitance_nf"),
        ("[power]\ncapacitance_nf = 1.0", "", "[power]"),
        ("latency_ms = 10", "", "latency_ms"),
        ("frequency_mhz = 500", "frequency_mhz = 2000", "frequency_mhz"),
        ("voltage = 0.8", "voltage = 0", "voltage"),
        ('name = "b"', "name = [", "TOML"),
        ("[power]", "memory = 3\n[power]", "[memory]: must be a table"),
        ("[power]", "[memory]\nram_kib = 64\n[power]", "[memory]: missing key 'flash_kib'"),
        ("[power]", "[memory]\nflash_kib = 1024\nram_kib = -1\n[power]", "[memory]: key 'ram_kib'"),
    ],
)
def test_bad_board_names_the_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    path = tmp_path / "board.toml"
    path.write_text(BASE.replace(old, new))
    with pytest.raises(UserError) as error:
        load_board(path)
    assert key in str(error.value) and str(path) in str(error.value)


def test_microcontroller_memories() -> None:
    """The Cortex-M profiles carry their parts' memories (docs/BOARDS.md); the A-class boards need none."""
    m7, m4 = load_board("cortex-m7").memory, load_board("cortex-m4").memory
    assert m7 is not None and (m7.flash_bytes, m7.ram_bytes, m7.external_flash_bytes) == (
        2 << 20,
        512 << 10,
        64 << 20,
    )
    assert m4 is not None and (m4.flash_bytes, m4.ram_bytes, m4.external_flash_bytes) == (
        1 << 20,
        128 << 10,
        0,
    )
    assert load_board("rt3-default").memory is None


def test_unknown_board() -> None:
    with pytest.raises(UserError, match="no-such-board"):
        load_board("no-such-board")


def _board(tmp_path: Path):
    path = tmp_path / "board.toml"
    path.write_text(BASE)
    return load_board(path)


def test_single_frequency_energy_is_power_times_latency(tmp_path: Path) -> None:
    board = _board(tmp_path)
    cycles = 2e6  # 2 ms at 1 GHz
    sim = simulate(board, cycles, [cycles, cycles], (1.0, 0.0))
    dense_top = sim.scenarios[0]
    assert dense_top.joules_per_inference == pytest.approx(board.power_watts(0) * cycles / 1e9)
    assert dense_top.inferences_per_charge == pytest.approx(100.0 / dense_top.joules_per_inference)


def test_fewer_cycles_and_lower_voltage_extend_battery(tmp_path: Path) -> None:
    board = _board(tmp_path)
    dense = 4e6
    sim = simulate(board, dense, [dense / 2, dense / 4], (0.5, 0.5))
    by_name = {s.name: s for s in sim.scenarios}
    # Following the trace at lower voltage is already cheaper per inference than pinning the top level.
    assert by_name["dense, trace"].joules_per_inference < by_name["dense, top frequency"].joules_per_inference
    assert sim.battery_ratio > 2.0
    # Dense needs 4 ms at 1 GHz (meets 10 ms) and 8 ms at 500 MHz (meets it too): no misses.
    assert by_name["dense, trace"].deadline_misses_per_charge == 0


def test_deadline_misses_without_switching(tmp_path: Path) -> None:
    board = _board(tmp_path)
    level0 = 6e6  # 6 ms at 1 GHz meets 10 ms, 12 ms at 500 MHz does not
    sim = simulate(board, level0, [level0, level0 / 3], (0.5, 0.5))
    by_name = {s.name: s for s in sim.scenarios}
    assert by_name["rt3c levels, trace"].deadline_misses_per_charge == 0
    stuck = by_name["rt3c densest level, trace, no switching"]
    # Half the time at each level: inferences at 500 MHz are 1/3 of all (half as many per second).
    assert stuck.miss_fraction == pytest.approx(1 / 3)


def test_trace_file(tmp_path: Path) -> None:
    board = load_board("rt3-default")
    trace = tmp_path / "trace.txt"
    trace.write_text("# mhz seconds\n1400 5\n1000 3\n800 1\n800 1\n")
    assert load_trace(trace, board) == pytest.approx(RT3_DEFAULT_TRACE)
    trace.write_text("1234 5\n")
    with pytest.raises(UserError, match="1234 MHz"):
        load_trace(trace, board)


def test_trace_must_match_levels(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^trace \[0.7, 0.7\]: "):
        simulate(_board(tmp_path), 1e6, [1e6, 1e6], (0.7, 0.7))
