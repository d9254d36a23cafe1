"""Executed-instruction counts of ARM programs under qemu, in total and per function (deterministic, unlike time).

qemu 7.2 loads TCG plugins (`-plugin`, API v1) but ships none; rt3c has its own, `qemu_plugin/insn_count.c`,
built once with the host's gcc into the kernel cache directory. It counts every executed guest instruction
and, separately, those inside given address ranges; rt3c takes the ranges from `nm -S` of the binary, so a
region is a set of function symbols (e.g. the functions a TVM kernel compiled to, `kernel_functions`).

    target = get_target("aarch64")
    regions = {"layer0": kernel_functions(project / "rt3_main", target, "sparse_3_L0")}
    counts = count_instructions(target, Path("rt3_main"), ["0", "x.bin", "y.bin"], regions, cwd=project)
    counts.total, counts.regions["layer0"]

Works for the targets that run under qemu: `aarch64` (qemu-aarch64, linux-user) and the bare-metal
Cortex-M targets (qemu-system-arm with semihosting). Counts are exact per instruction; they are not
split per thread, so count single-threaded programs.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rt3c.codegen.targets import Target
from rt3c.core import cache
from rt3c.core.errors import SettingError, UserError, VerificationError

PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu_plugin" / "insn_count.c"
FUNCTION_TYPES = frozenset("tTwW")
"""`nm` symbol types of code: local and global functions, and weak ones."""


def plugin_path(cache_dir: Path | None = None) -> Path:
    """The plugin's shared object, compiled on first use and cached by the hash of its source."""
    source = PLUGIN_SOURCE.read_bytes()
    cache_dir = cache.cache_dir("kernels") if cache_dir is None else cache_dir
    entry = cache_dir / f"insn_count-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if cache.read_entry(entry) is not None:
        return entry
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        staged = Path(tmp) / entry.name
        command = ["gcc", "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror"]
        result = subprocess.run(
            [*command, "-o", str(staged), str(PLUGIN_SOURCE)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise VerificationError(
                f"building the qemu plugin {PLUGIN_SOURCE} failed: {result.stderr.strip()}"
            )
        cache.write_entry(entry, staged.read_bytes())  # atomic: concurrent first uses at worst compile twice
    return entry


def nm_tool(target: Target) -> str:
    """The `nm` of the target's toolchain (`aarch64-linux-gnu-nm`, `arm-none-eabi-nm`, `nm`)."""
    return target.cc[: -len("gcc")] + "nm" if target.cc.endswith("gcc") else "nm"


def function_ranges(binary: Path, nm: str = "nm") -> dict[str, tuple[int, int]]:
    """Every sized function symbol of `binary` -> its address range [start, end) (from `nm -S`).

    Thumb functions' addresses have bit 0 set in ELF symbols; it is cleared, as qemu reports the
    instruction's address.
    """
    result = subprocess.run(
        [nm, "-S", "--defined-only", str(binary)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise UserError(f"{binary}: cannot read its symbols with {nm}: {result.stderr.strip()}")
    ranges = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in FUNCTION_TYPES:
            start, size = int(parts[0], 16) & ~1, int(parts[1], 16)
            if size:
                ranges[parts[3]] = (start, start + size)
    return ranges


def kernel_functions(binary: Path, target: Target, kernel: str) -> list[str]:
    """The functions of `binary` that TVM kernel `kernel` compiled to.

    Every kernel has its packed-call entry `__tvm_ffi_<kernel>`; TVM's LLVM backend puts the body in a
    second function, `<kernel>_compute_`, while the C target (compiled by gcc) has one function.
    """
    ranges = function_ranges(binary, nm_tool(target))
    functions = [name for name in (f"__tvm_ffi_{kernel}", f"{kernel}_compute_") if name in ranges]
    if not functions:
        raise UserError(f"{binary}: no function of kernel {kernel} (no __tvm_ffi_{kernel})")
    return functions


@dataclass(frozen=True)
class InstructionCounts:
    total: int
    """Every instruction the guest executed, from the first to exit (startup and libc included)."""
    regions: dict[str, int]
    """Per region: instructions executed inside its functions."""


def _plugin_option(plugin: Path, out: Path, ranges: list[tuple[int, int]]) -> str:
    # qemu's option syntax separates arguments by commas and escapes a comma in a value as two.
    parts = [str(plugin), f"out={out}", *(f"range={start:x}-{end:x}" for start, end in ranges)]
    return ",".join(part.replace(",", ",,") for part in parts)


def count_instructions(
    target: Target,
    binary: Path,
    args: Sequence[str],
    regions: Mapping[str, Sequence[str]],
    cwd: Path | None = None,
    timeout: float = 1800,
) -> InstructionCounts:
    """Run `binary args...` under the target's qemu and count executed instructions.

    `regions` maps a label to the function symbols it covers (each must be in `binary`); a function may
    belong to several regions. `binary` and the paths in `args` are relative to `cwd` (semihosting passes
    bare-metal programs only a short command line, so keep them short). The program must exit with 0.
    """
    if target.board is None and not target.run_prefix:
        raise SettingError("target", "runs natively; instruction counts need a qemu target", target.name)
    target.check_tools()
    # Absolute: qemu-aarch64 is given `cwd / binary` and runs in `cwd`, so a relative `cwd` (a relative
    # `rt3c compile --out`) would be taken twice.
    cwd = Path.cwd() if cwd is None else cwd.resolve()
    available = function_ranges(cwd / binary, nm_tool(target))
    labels, ranges = [], []
    for label, functions in regions.items():
        for function in functions:
            if function not in available:
                raise UserError(f"{binary}: no function {function} (region {label})")
            labels.append(label)
            ranges.append(available[function])
    plugin = plugin_path()
    with tempfile.TemporaryDirectory(prefix="rt3c-insn-") as tmp:
        out = Path(tmp) / "counts.txt"
        command = target.command(str(binary) if target.board else str(cwd / binary), list(args))
        command[1:1] = ["-plugin", _plugin_option(plugin, out, ranges)]
        try:
            result = subprocess.run(
                command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise VerificationError(f"{binary} {' '.join(args)}: no answer within {timeout:.0f} s") from None
        if result.returncode != 0 or not out.is_file():
            raise VerificationError(
                f"{binary} {' '.join(args)} under {command[0]} failed ({result.returncode}): "
                f"{result.stderr.strip()[:500]}"
            )
        total_line, *range_lines = out.read_text().splitlines()
    counts = dict.fromkeys(regions, 0)
    for label, line in zip(labels, range_lines, strict=True):
        counts[label] += int(line.split()[1])
    return InstructionCounts(int(total_line.split()[1]), counts)
