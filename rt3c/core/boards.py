"""Board profiles: a target, its DVFS frequency levels with voltages, a power model, a battery, deadlines.

Profiles are TOML files: the shipped ones live in `rt3c/boards/` (`rt3c boards` lists them) and
`--board` also takes a path to the user's own. Keys (docs/BOARDS.md has the full reference):

    name, description, target                 # target: host | aarch64 | cortex-m4 | cortex-m7
    battery_joules                            # energy of one full charge
    cycles_per_instruction = 1.0              # executed instructions -> cycles (qemu-counted latencies)
    latency_ms                                # deadline for every level (optional if each level has one)
    [power] capacitance_nf, static_watts      # P = C * f * V^2 + static
    [[levels]] frequency_mhz, voltage, latency_ms (optional, overrides the board's)
    [memory] flash_kib, ram_kib, external_flash_kib (optional: the part's memories, KiB)

Levels are listed fastest first, like the plan's levels (densest first): plan level i runs at board level i.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rt3c.core.checks import real_number
from rt3c.core.errors import SettingError, UserError
from rt3c.core.plan_limits import MAX_FREQUENCY_KHZ, MAX_LEVELS

TARGETS = ("host", "aarch64", "cortex-m4", "cortex-m7")
BOARDS_DIR = Path(__file__).resolve().parent / "boards"


@dataclass(frozen=True)
class FrequencyLevel:
    frequency_hz: float
    voltage: float
    deadline_s: float

    @property
    def frequency_khz(self) -> int:
        return round(self.frequency_hz / 1e3)


@dataclass(frozen=True)
class BoardMemory:
    """The memories a compiled model must fit (`[memory]`, in KiB in the file, bytes here)."""

    flash_bytes: int
    """Internal flash: code and the small constants."""
    ram_bytes: int
    """SRAM the model may use: arena, descriptors, stack."""
    external_flash_bytes: int = 0
    """Memory-mapped external flash (QSPI/OSPI NOR) that takes the weights section; 0: none."""


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    target: str
    battery_joules: float
    cycles_per_instruction: float
    capacitance_f: float
    static_watts: float
    levels: tuple[FrequencyLevel, ...]
    memory: BoardMemory | None = None

    def power_watts(self, level: int) -> float:
        """Power drawn while computing at `level`: C * f * V^2 + static."""
        lv = self.levels[level]
        return self.capacitance_f * lv.frequency_hz * lv.voltage**2 + self.static_watts


def shipped_boards() -> list[str]:
    return sorted(path.stem for path in BOARDS_DIR.glob("*.toml"))


BOARD_QUANTITY_LIMIT = 1e12
"""No board quantity comes near this in its unit (MHz, V, J, nF, W, ms); the bound keeps products such as
C * f * V^2 finite, so no simulation prints inf."""


def _number(
    table: dict[str, Any], key: str, where: str, *, positive: bool = True, default: float | None = None
) -> float:
    value = table.get(key, default)
    if value is None:
        raise UserError(f"{where}: missing key {key!r}")
    return real_number(value, f"{where}: key {key!r}", low=0.0, high=BOARD_QUANTITY_LIMIT, low_open=positive)


def parse_board(data: dict[str, Any], source: str) -> Board:
    """Build a Board from parsed TOML, naming the key at fault in any error."""
    for key in ("name", "target"):
        if not isinstance(data.get(key), str):
            raise UserError(f"{source}: missing or non-string key {key!r}")
    if data["target"] not in TARGETS:
        raise UserError(f"{source}: key 'target' is {data['target']!r}; expected one of {', '.join(TARGETS)}")
    power = data.get("power")
    if not isinstance(power, dict):
        raise UserError(f"{source}: missing table [power]")
    raw_levels = data.get("levels")
    if not isinstance(raw_levels, list) or not raw_levels:
        raise UserError(f"{source}: missing [[levels]] (at least one frequency level)")
    if len(raw_levels) > MAX_LEVELS:
        raise UserError(
            f"{source}: [[levels]] has {len(raw_levels)} levels, at most {MAX_LEVELS} are supported"
        )
    board_deadline = data.get("latency_ms")
    levels = []
    for index, entry in enumerate(raw_levels):
        where = f"{source}: levels[{index}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: must be a table")
        deadline_ms = _number(entry, "latency_ms", where, default=board_deadline)
        levels.append(
            FrequencyLevel(
                frequency_hz=real_number(
                    entry.get("frequency_mhz"),
                    f"{where}: key 'frequency_mhz'",
                    low=1e-3,  # 1 kHz, the unit of the runtime's frequency table
                    high=MAX_FREQUENCY_KHZ / 1e3,
                )
                * 1e6,
                voltage=_number(entry, "voltage", where),
                deadline_s=deadline_ms / 1e3,
            )
        )
    # In kHz, as the runtime's table holds them: two levels a few Hz apart would be one level there.
    frequencies = [level.frequency_khz for level in levels]
    if frequencies != sorted(frequencies, reverse=True) or len(set(frequencies)) != len(frequencies):
        raise UserError(f"{source}: key 'frequency_mhz' of [[levels]] must strictly decrease (fastest first)")
    voltages = [level.voltage for level in levels]
    if voltages != sorted(voltages, reverse=True):
        raise UserError(
            f"{source}: key 'voltage' of [[levels]] must not rise as the frequency falls, got {voltages}"
        )
    return Board(
        name=data["name"],
        description=str(data.get("description", "")),
        target=data["target"],
        battery_joules=_number(data, "battery_joules", source),
        cycles_per_instruction=_number(data, "cycles_per_instruction", source, default=1.0),
        capacitance_f=_number(power, "capacitance_nf", f"{source}: [power]") * 1e-9,
        static_watts=_number(power, "static_watts", f"{source}: [power]", positive=False, default=0.0),
        levels=tuple(levels),
        memory=_memory(data, source),
    )


def _memory(data: dict[str, Any], source: str) -> BoardMemory | None:
    table = data.get("memory")
    if table is None:
        return None
    where = f"{source}: [memory]"
    if not isinstance(table, dict):
        raise UserError(f"{where}: must be a table")
    external = _number(table, "external_flash_kib", where, positive=False, default=0.0)
    flash, ram = _number(table, "flash_kib", where), _number(table, "ram_kib", where)
    return BoardMemory(round(flash * 1024), round(ram * 1024), round(external * 1024))


def board_file(ref: str | Path) -> Path:
    """The TOML file of a shipped board (by name) or of the user's own (by path)."""
    path = Path(ref)
    if not path.suffix and str(ref) in shipped_boards():
        return BOARDS_DIR / f"{ref}.toml"
    if not path.is_file():
        raise SettingError(
            "board", f"no such board file or shipped board ({', '.join(shipped_boards())})", ref
        )
    return path


def load_board(ref: str | Path) -> Board:
    """A shipped board by name, or a TOML file by path."""
    path = board_file(ref)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    return parse_board(data, str(path))
