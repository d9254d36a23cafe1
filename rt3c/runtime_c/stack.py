"""The worst-case stack of a generated library's inference, from the compiler's `-fstack-usage` frames of a
second compile of the runtime and C kernels in a temporary folder (the delivered objects keep their flags)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rt3c.codegen.targets import Target

STACK_METHOD = (
    "-fstack-usage frames: NAME_invoke's own + the largest kernel's + the largest helper a kernel can "
    "call in the library (a non-entry function of kernels.c, TVMBackendAllocWorkspace/FreeWorkspace); "
    "C library calls (expf, memcpy) not included"
)


@dataclass(frozen=True)
class Stack:
    bytes_estimate: int | None
    """Worst-case stack of one `NAME_invoke` (see `stack_estimate`); None: not measurable (`why`)."""
    why: str | None = None
    """Why there is no estimate."""


def stack_frames(su_text: str) -> dict[str, tuple[int, str]]:
    """Function -> (frame bytes, qualifiers: static, dynamic, dynamic,bounded) of a `-fstack-usage` file
    (lines `file:line:column:function<TAB>bytes<TAB>qualifiers`; clang omits the column)."""
    frames: dict[str, tuple[int, str]] = {}
    for line in su_text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            name = parts[0].rsplit(":", 1)[-1]
            frames[name] = (max(int(parts[1]), frames.get(name, (0, ""))[0]), parts[2])
    return frames


def stack_estimate(
    prefix: str, runtime: dict[str, tuple[int, str]], kernels: dict[str, tuple[int, str]]
) -> Stack:
    """The deepest call chain of `PREFIX_invoke`: it calls kernels only, through the level tables (so any
    of them), and a kernel calls at most its compute helpers in kernels.c (when not inlined) and the
    workspace allocators of the runtime. Hence invoke's frame + the largest kernel entry's
    (`__tvm_ffi_*`) + the largest such helper's: an upper bound of the library's part, one level of
    helpers deep (the C kernels TVM writes for rt3c define only entries, which call no other entry)."""
    invoke = f"{prefix}_invoke"
    if invoke not in runtime:
        return Stack(None, f"{invoke} not in the -fstack-usage output")
    allocators = ("TVMBackendAllocWorkspace", "TVMBackendFreeWorkspace")
    path = {
        invoke: runtime[invoke],
        **{name: runtime[name] for name in allocators if name in runtime},
        **kernels,
    }
    unbounded = sorted(name for name, (_, kind) in path.items() if kind.split(",") == ["dynamic"])
    if unbounded:
        return Stack(None, f"unbounded dynamic stack in {', '.join(unbounded)}")
    entries = [size for name, (size, _) in kernels.items() if name.startswith("__tvm_ffi_")]
    helpers = [size for name, (size, _) in kernels.items() if not name.startswith("__tvm_ffi_")]
    helpers += [runtime[name][0] for name in allocators if name in runtime]
    return Stack(runtime[invoke][0] + max(entries, default=0) + max(helpers, default=0))


def measure_stack(build_dir: Path, prefix: str, target: Target) -> Stack:
    """Compile `build_dir`'s runtime and C kernels again with `-fstack-usage` added to the compiler (its
    Makefile's rules and flags otherwise) in a temporary folder, so that no `.su` file reaches the project,
    and estimate the stack from the frames (`stack_estimate`)."""
    if target.kernel_output == "object":
        return Stack(
            None, f"the {target.name} kernels are LLVM objects from TVM, not covered by -fstack-usage"
        )
    with tempfile.TemporaryDirectory(prefix="rt3c-stack-") as tmp:
        shutil.copy(build_dir / "Makefile", tmp)
        shutil.copy(build_dir / "kernels.c", tmp)
        command = ["make", "-s", f"SRC={build_dir.resolve()}", f"CC={target.cc} -fstack-usage"]
        result = subprocess.run(
            [*command, f"{prefix}_model.o", "kernels.o"], cwd=tmp, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            return Stack(None, f"compiling with -fstack-usage failed: {result.stderr.strip()[-300:]}")
        runtime = stack_frames((Path(tmp) / f"{prefix}_model.su").read_text())
        kernels = stack_frames((Path(tmp) / "kernels.su").read_text())
    return stack_estimate(prefix, runtime, kernels)
