"""Kernel costs in their units, and units into cycles: all that `rt3c simulate` and `rt3c report` need of
the latency model, so they load neither TVM nor torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rt3c.core.errors import SettingError

if TYPE_CHECKING:
    from rt3c.codegen.targets import Target

SOURCES = ("qemu", "host")
UNITS = {"qemu": "instructions", "host": "seconds"}
SPARSE_PREFIX = "sparse_"
"""`lower_model` names every SparseLinear kernel `sparse_<node>_L<level>`; every other kernel is `op...`."""


def host_clock_hz() -> float:
    """The host CPU's clock, from /proc/cpuinfo (the highest `cpu MHz` of any core)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        raise SettingError("latency", "cannot read /proc/cpuinfo for the host's clock", "host") from None
    clocks = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    if not clocks:
        raise SettingError("latency", "/proc/cpuinfo has no 'cpu MHz' line for the host's clock", "host")
    return max(clocks) * 1e6


def check_source(source: str, target: Target) -> None:
    if source not in SOURCES:
        raise SettingError("latency", f"choose one of {', '.join(SOURCES)}", source)
    if source == "qemu" and target.name == "host":
        raise SettingError(
            "latency", "the board's target is host, which runs natively; measure on the host", "qemu"
        )


def default_source(target: Target) -> str:
    """Count instructions for the ARM targets (deterministic), time the host."""
    return "host" if target.name == "host" else "qemu"


def cycles_per_unit(source: str, cycles_per_instruction: float, host_hz: float | None = None) -> float:
    """Instructions -> cycles with the board's CPI; seconds -> cycles with the host's clock."""
    if source == "qemu":
        return cycles_per_instruction
    return host_hz if host_hz is not None else host_clock_hz()


@dataclass(frozen=True)
class KernelCost:
    symbol: str
    calls: tuple[int, ...]
    """Per level: how often that level's inference calls the kernel."""
    units: float
    """Per call, in the program's unit (instructions or seconds)."""

    @property
    def sparse(self) -> bool:
        return self.symbol.startswith(SPARSE_PREFIX)


@dataclass(frozen=True)
class ProgramCost:
    target: str
    source: str
    levels: tuple[str, ...]
    kernels: tuple[KernelCost, ...]

    @property
    def unit(self) -> str:
        return UNITS[self.source]

    def level_units(self, level: int, sparse: bool | None = None) -> float:
        """Cost of one inference at `level`; only the SparseLinear kernels (True) or the others (False)."""
        return sum(k.units * k.calls[level] for k in self.kernels if sparse is None or k.sparse == sparse)

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "source": self.source,
            "unit": self.unit,
            "levels": list(self.levels),
            "level_units": [self.level_units(level) for level in range(len(self.levels))],
            "kernels": [asdict(kernel) for kernel in self.kernels],
        }

    @classmethod
    def from_json(cls, data: dict) -> ProgramCost:
        kernels = tuple(
            KernelCost(k["symbol"], tuple(k["calls"]), float(k["units"])) for k in data["kernels"]
        )
        return cls(data["target"], data["source"], tuple(data["levels"]), kernels)
