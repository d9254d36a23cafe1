"""The targets rt3c compiles for: TVM target, C toolchain, and how to run a program built for it.

- `host`: x86_64 Linux, LLVM with explicit mtriple and mcpu (TVM's `mcpu=native` falls back to generic).
- `aarch64`: Cortex-A Linux, LLVM with NEON, statically linked, run under qemu-aarch64.
- `cortex-m4` / `cortex-m7`: bare metal, TVM's C target compiled by arm-none-eabi-gcc with the hard-float
  ABI, run under qemu-system-arm (mps2-an386 / mps2-an500) with semihosting.
Kernels never need the TVM runtime: asserts are off and the generated code calls no runtime function.
Building them is `rt3c.codegen.tvm_build`; this module loads TVM only for `Target.tvm_target`.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from rt3c.core.errors import SettingError

if TYPE_CHECKING:
    import tvm


@dataclass(frozen=True)
class Target:
    name: str
    kernel_output: str
    """"object" (LLVM object file) or "c" (C source, compiled with the project)."""
    cc: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    run_prefix: tuple[str, ...] = ()
    tools: dict[str, str] = field(default_factory=dict)
    """Executables this target needs -> the Debian package that provides each."""
    vector_floats: int = 0
    """SIMD width in floats that kernel schedules vectorise for; 0: no vector types (TVM's C target)."""
    token_vectors: int = 2
    """Vectors of tokens per SparseLinear token block: each broadcast weight feeds this many FMAs."""
    one_token_row_pairs: bool = False
    """With one token, SparseLinear one-row tiles also go two at a time (docs/KERNELS.md, item 5) where
    the GEMV template is not taken: fewer instructions on aarch64, but on the host LLVM vectorises that
    loop with AVX-512 gathers (768x768, 1x8, s = 0.75: best of 7 x 50 calls 0.080-0.083 ms where one tile
    at a time takes 0.062-0.065)."""
    board: str | None = None
    """The qemu machine a bare-metal target runs on (its startup file and linker script are generated)."""

    def command(self, binary: str, args: list[str]) -> list[str]:
        """How to run `binary args...` built for this target on this machine."""
        if self.board is None:
            return [*self.run_prefix, binary, *args]
        # Bare metal: the program's command line reaches it through semihosting.
        arguments = ",".join(f"arg={part}" for part in [binary, *args])
        return [
            "qemu-system-arm", "-M", self.board, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", f"enable=on,target=native,{arguments}", "-kernel", binary,
        ]  # fmt: skip

    @cached_property
    def tvm_target(self) -> tvm.target.Target:
        # TVM loads here, when a kernel is built: the CLI and the search workers read this table only.
        import tvm

        # Reassociation lets LLVM vectorise float reductions (LayerNorm's sums: 10x faster on the host);
        # it changes rounding only. No-NaN/no-Inf flags stay off: models test IsNaN.
        fast_math = {"fast-math-reassoc": True, "fast-math-contract": True}
        if self.name == "host":
            cpu = tvm.target.codegen.llvm_get_system_cpu()
            return tvm.target.Target(
                {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": cpu, **fast_math}
            )
        if self.name == "aarch64":
            return tvm.target.Target(
                {
                    "kind": "llvm",
                    "mtriple": "aarch64-linux-gnu",
                    "mcpu": "cortex-a72",
                    "mattr": ["+neon"],
                    **fast_math,
                }
            )
        return tvm.target.Target({"kind": "c"})

    def check_tools(self) -> None:
        for tool, package in self.tools.items():
            if shutil.which(tool) is None:
                raise SettingError(
                    "target", f"{tool} not found; install it with `apt-get install {package}`", self.name
                )


WARNINGS = ("-Wall", "-Wextra", "-Werror")
# -ffp-contract=fast: ISO C modes otherwise keep a * b + c as a multiply and an add, where the FPU has a
# fused multiply-add (Cortex-M4, 768x768 dense kernel at 16 tokens: 25.4M -> 16.0M executed instructions).
_M_COMMON = (
    "-mthumb",
    "-mfloat-abi=hard",
    "-O2",
    "-std=c99",
    "-ffp-contract=fast",
    "-ffunction-sections",
    "-fdata-sections",
)

_M_TOOLS = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
}
_M_LDFLAGS = ("--specs=rdimon.specs", "-Wl,--gc-sections", "-lm")

TARGETS = {
    "host": Target(
        "host",
        "object",
        "gcc",
        ("-O2", "-std=c99"),
        ldflags=("-lm",),
        tools={"gcc": "gcc"},
        vector_floats=16,  # AVX-512; on AVX2 machines a 16-float tile is two registers, still blocked
        token_vectors=2,  # host time at 768x768/128 tokens: 1 or 4 vectors are 1.5x slower than 2
    ),
    "aarch64": Target(
        "aarch64",
        "object",
        "aarch64-linux-gnu-gcc",
        ("-O2", "-std=c99"),
        ldflags=("-static", "-lm"),
        run_prefix=("qemu-aarch64",),
        vector_floats=4,  # NEON
        token_vectors=4,  # executed instructions at 768x768/16 tokens/s=0.77: 0.226x of dense vs 0.284x with 2
        one_token_row_pairs=True,  # 768x768, 1x8, 1 token, s = 0.77: 588,857 -> 515,699 instructions
        tools={"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "qemu-aarch64": "qemu-user"},
    ),
    "cortex-m4": Target(
        "cortex-m4",
        "c",
        "arm-none-eabi-gcc",
        ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", *_M_COMMON),
        ldflags=_M_LDFLAGS,
        tools=_M_TOOLS,
        board="mps2-an386",
    ),
    "cortex-m7": Target(
        "cortex-m7",
        "c",
        "arm-none-eabi-gcc",
        ("-mcpu=cortex-m7", "-mfpu=fpv5-d16", *_M_COMMON),
        ldflags=_M_LDFLAGS,
        tools=_M_TOOLS,
        board="mps2-an500",
    ),
}


# Accumulators a kernel keeps live: half the register file of AVX-512 and NEON (32 vectors each) and of
# the Cortex-M FPU (32 single-precision registers), leaving the rest for activations, weights, addresses.
_ACCUMULATOR_REGISTERS = 16


def token_block(target: Target, tile_rows: int, tokens: int) -> int:
    """How many tokens one pass over the weights handles (the width of a tile row's accumulator block)."""
    registers_per_row = max(_ACCUMULATOR_REGISTERS // tile_rows, 1)
    if target.vector_floats:
        block = target.vector_floats * min(registers_per_row, target.token_vectors)
    else:
        block = registers_per_row
    return min(block, tokens)


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise SettingError("target", f"unknown target; choose one of {', '.join(TARGETS)}", name)
    return TARGETS[name]


# The -mfpu of each Cortex-M part arm-none-eabi-gcc 12 knows; None: no FPU (soft-float ABI).
CORTEX_M_FPU = {
    "cortex-m0plus": None,
    "cortex-m3": None,
    "cortex-m23": None,
    "cortex-m4": "fpv4-sp-d16",
    "cortex-m7": "fpv5-d16",
    "cortex-m33": "fpv5-sp-d16",
    "cortex-m35p": "fpv5-sp-d16",
    "cortex-m55": "auto",
}


def cortex_m_part(target: Target, mcpu: str, verify: bool) -> Target:
    """`target` (cortex-m4 or cortex-m7: TVM's C kernels, bare metal) built for the part `mcpu`.

    Only the qemu board's own CPU can be verified; any other part needs `verify` off, and gets no
    startup file or linker script (those are qemu's MPS2 boards'): the library is what it is for.
    """
    if target.board is None:
        raise SettingError(
            "mcpu", f"only with a Cortex-M target (cortex-m4, cortex-m7), not {target.name}", mcpu
        )
    if mcpu not in CORTEX_M_FPU:
        raise SettingError(
            "mcpu",
            f"not a Cortex-M part rt3c builds for; choose one of {', '.join(CORTEX_M_FPU)}",
            f"{mcpu!r:.40}",
        )
    if f"-mcpu={mcpu}" in target.cflags:
        return target
    if verify:
        raise SettingError(
            "mcpu",
            f"qemu's {target.board} (target {target.name}) cannot run it; turn verification off to generate "
            "and build the project without running it",
            mcpu,
        )
    fpu = CORTEX_M_FPU[mcpu]
    kept = [flag for flag in target.cflags if not flag.startswith(("-mcpu=", "-mfpu=", "-mfloat-abi="))]
    float_flags = [f"-mfpu={fpu}", "-mfloat-abi=hard"] if fpu else ["-mfloat-abi=soft"]
    return dataclasses.replace(target, cflags=(f"-mcpu={mcpu}", *float_flags, *kept), board=None)
