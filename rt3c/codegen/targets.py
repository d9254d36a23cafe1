"""The targets rt3c compiles for: TVM target, C toolchain, and how to run a program built for it.

- `host`: x86_64 Linux, LLVM with explicit mtriple and mcpu (TVM's `mcpu=native` falls back to generic).
- `aarch64`: Cortex-A Linux, LLVM with NEON, statically linked, run under qemu-aarch64.
- `cortex-m4` / `cortex-m7`: bare metal, TVM's C target compiled by arm-none-eabi-gcc with the hard-float
  ABI, run under qemu-system-arm (mps2-an386 / mps2-an500) with semihosting.
Kernels never need the TVM runtime: asserts are off and the generated code calls no runtime function.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property

import tvm

from rt3c.codegen.schedules import schedule_matmul
from rt3c.core.errors import UserError


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
                raise UserError(
                    f"--target {self.name}: {tool} not found; install it with `apt-get install {package}`"
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


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"--target {name}: unknown target; choose one of {', '.join(TARGETS)}")
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
        raise UserError(
            f"--mcpu {mcpu}: only with a Cortex-M target (cortex-m4, cortex-m7), not {target.name}"
        )
    if mcpu not in CORTEX_M_FPU:
        raise UserError(
            f"--mcpu {mcpu!r:.40}: not a Cortex-M part rt3c builds for; choose one of {', '.join(CORTEX_M_FPU)}"
        )
    if f"-mcpu={mcpu}" in target.cflags:
        return target
    if verify:
        raise UserError(
            f"--mcpu {mcpu}: qemu's {target.board} (--target {target.name}) cannot run it; add --no-verify to "
            "generate and build the project without running it"
        )
    fpu = CORTEX_M_FPU[mcpu]
    kept = [flag for flag in target.cflags if not flag.startswith(("-mcpu=", "-mfpu=", "-mfloat-abi="))]
    float_flags = [f"-mfpu={fpu}", "-mfloat-abi=hard"] if fpu else ["-mfloat-abi=soft"]
    return dataclasses.replace(target, cflags=(f"-mcpu={mcpu}", *float_flags, *kept), board=None)


_EXTENT = re.compile(r"T\.int(?:32|64)\((\d+)\)|\b(\d+)\b")
_DTYPE = re.compile(r"^\s*,\s*\"(\w+)\"")


def _allocations(script: str) -> list[tuple[int, str]]:
    """(elements, dtype) of every `alloc_buffer((shape...), dtype?)` in TVMScript text."""
    found = []
    for line in script.splitlines():
        if "alloc_buffer((" not in line:
            continue
        rest = line.split("alloc_buffer((", 1)[1]
        depth, end = 1, 0
        while depth and end < len(rest):
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
        elements = 1
        for wrapped, bare in _EXTENT.findall(rest[: end - 1]):
            elements *= int(wrapped or bare)
        dtype = _DTYPE.match(rest[end:])
        found.append((elements, dtype.group(1) if dtype else "float32"))  # TVMScript omits the default dtype
    return found


def workspace_bytes(func: tvm.tirx.PrimFunc, target: Target) -> int:
    """An upper bound of the workspace a kernel asks for on `target`: all intermediate buffers of the
    function as `build_kernels` compiles it (matmuls scheduled, which adds their accumulator), each 64-aligned.

    TVM keeps small intermediates on the stack and asks `TVMBackendAllocWorkspace` for the others; the
    runtime serves them from a static scratch area sized by the largest bound over all kernels.
    """
    total = 0
    for elements, dtype in _allocations(schedule_matmul(func, target.vector_floats).script()):
        bits = 8 if dtype == "bool" else int(re.sub(r"\D", "", dtype) or 8)
        total += -(-(elements * bits // 8) // 64) * 64
    return total


def build_kernels(functions: dict[str, tvm.tirx.PrimFunc], target: Target) -> tvm.runtime.Module:
    """Compile PrimFuncs into one module with no runtime dependencies (asserts off), matmuls scheduled."""
    module = tvm.IRModule(
        {
            name: schedule_matmul(func.with_attr("global_symbol", name), target.vector_floats)
            for name, func in functions.items()
        }
    )
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        return tvm.compile(module, target=target.tvm_target).mod
