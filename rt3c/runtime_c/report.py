"""The memory and speed report of a generated project: `report.json` and `REPORT.md` inside it.

Flash and RAM come from the section sizes of the prelinked library object (`NAME.o`, whose sections are
the library's whole footprint before the final link drops unused ones), split with what the program knows:
the weights section holds the weights (float32, or int8 with their float scales) and integer indices; the
arena section holds activations and scratch; what else is writable is descriptors and level state. Speed is measured when the project was
verified: processor time per inference of the host build, and executed instructions per inference of a
qemu target's build (each level run with and without repeats; the difference excludes startup and I/O).
With a board (`rt3c compile --board`) whose target the build is for, each level's instructions become its
latency at its frequency on the board (x the board's cycles per instruction), next to its deadline.

The stack comes from `rt3c.runtime_c.stack`; the text of REPORT.md and of the summary from
`rt3c.runtime_c.report_text`.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rt3c.codegen.targets import Target
from rt3c.core.boards import Board, BoardMemory
from rt3c.core.errors import VerificationError
from rt3c.runtime_c.build_files import binutil
from rt3c.runtime_c.program import Program
from rt3c.runtime_c.project import weights_bytes
from rt3c.runtime_c.report_text import DENSE_LABEL, markdown
from rt3c.runtime_c.stack import STACK_METHOD, Stack


@dataclass(frozen=True)
class Flash:
    code: int
    """Text and read-only data of the runtime and kernels (descriptors, tables), without the weights."""
    weights: int
    """Float and int8 constants: weights (and their scales), biases, embeddings."""
    indices: int
    """Integer constants: block indices, shape constants."""
    padding: int
    """Alignment between the constants (each array starts on 64 bytes)."""
    tokenizer: int = 0
    """The C tokenizer (`rt3c compile --tokenizer`): its code and vocabulary tables (0: none)."""

    @property
    def total(self) -> int:
        return self.code + self.weights + self.indices + self.padding + self.tokenizer


@dataclass(frozen=True)
class Ram:
    activations: int
    """Activations, inputs and outputs (the planned part of the arena, aligned)."""
    scratch: int
    """Kernel intermediates (the rest of the arena)."""
    descriptors: int
    """The arena tensors' DLTensors and the level state (zero-initialized)."""

    @property
    def total(self) -> int:
        return self.activations + self.scratch + self.descriptors


@dataclass(frozen=True)
class LevelReport:
    name: str
    frequency_khz: int | None
    sparsity: float | None
    """Fraction of the planned layers' weights removed at this level (None: no sparse layer)."""
    max_abs_diff: float | None
    """Against onnxruntime, when verified."""
    host_us: float | None
    """Processor time per inference of the host build, in µs, when verified."""
    instructions: int | None
    """Executed instructions per inference on the target under qemu, when verified on qemu."""
    latency_ms: float | None = None
    """At the level's frequency on the board (`--board`): instructions x its cycles per instruction."""
    deadline_ms: float | None = None
    """The board's deadline for the level (`--board`)."""
    speedup_vs_dense: float | None = None
    """onnxruntime's time on the dense model / the host build's time of this level (DENSE_LABEL); for a
    cross target, of the host build its verification makes."""


@dataclass(frozen=True)
class DenseReference:
    onnxruntime_us: float | None
    """Processor µs per inference of onnxruntime on the dense model (one thread, the host build's inputs)."""
    why: str | None = None
    """Why there is none (`no_dense_reference: ...` when compile got an encoded model)."""


def onnxruntime_us(model: Path, feeds: dict[str, np.ndarray], repeats: int, runs: int) -> float | str:
    """Processor µs per inference of onnxruntime on `model` with one thread (intra- and inter-op),
    sequential: after a first inference, the fastest of `runs` runs of `repeats` (the host build's
    method: processor time, as its clock()); or why it cannot run on `feeds`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    missing = [name for name in names if name not in feeds]
    if missing:
        return f"the dense model's inputs {', '.join(missing)} are not the compiled model's"
    inputs = {name: feeds[name] for name in names}
    session.run(None, inputs)
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        for _ in range(repeats):
            session.run(None, inputs)
        best = min(best, time.process_time() - start)
    return 1e6 * best / repeats


def board_latencies(
    instructions: list[int | None], board: Board | None, target: Target
) -> tuple[list[float | None], list[float | None], str | None]:
    """Per level the latency (ms) at its frequency on `board` and the board's deadline (ms), and why there
    is no latency when a board is given but its figures cannot be had (None otherwise). A latency needs
    instructions counted for the board's own target (a host time or another CPU's count says nothing about
    the board's cycles); deadlines need only the board."""
    if board is None:
        return [None] * len(instructions), [None] * len(instructions), None
    deadlines: list[float | None] = [1e3 * level.deadline_s for level in board.levels]
    if board.target != target.name:
        why = f"board {board.name} is for {board.target}, this build for {target.name}"
        return [None] * len(instructions), deadlines, why
    if any(count is None for count in instructions):
        return [None] * len(instructions), deadlines, "no instruction counts (a host build or --no-verify)"
    latencies: list[float | None] = [
        1e3 * count * board.cycles_per_instruction / level.frequency_hz
        for count, level in zip(instructions, board.levels, strict=True)
    ]
    return latencies, deadlines, None


def section_sizes(library_object: Path, target: Target) -> dict[str, int]:
    """Size of every section of an object file, from the target's `size -A`."""
    result = subprocess.run(
        [binutil(target, "size"), "-A", str(library_object)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise VerificationError(f"size -A {library_object} failed: {result.stderr.strip()}")
    sizes: dict[str, int] = {}
    for line in result.stdout.splitlines()[2:]:
        parts = line.split()
        if len(parts) == 3 and parts[1].isdigit():
            sizes[parts[0]] = sizes.get(parts[0], 0) + int(parts[1])
    return sizes


def memory(
    program: Program, sections: dict[str, int], activation_bytes: int, tokenizer_bytes: int = 0
) -> tuple[Flash, Ram]:
    """Flash and RAM of the library from its sections (see the module docstring); `tokenizer_bytes`: the
    read-only sections of the tokenizer's object, which the library's code sections include."""
    weights_section, arena_section = f".rodata.{program.prefix}_weights", f".bss.{program.prefix}_arena"
    constants = [t for t in program.tensors.values() if t.storage == "constant"]
    # Weights are float32 or int8 (int8 weights; no index or shape constant is a signed byte).
    weight = [np.dtype(t.dtype).kind == "f" or np.dtype(t.dtype) == np.int8 for t in constants]
    floats = sum(t.nbytes for t, is_weight in zip(constants, weight, strict=True) if is_weight)
    integers = sum(t.nbytes for t, is_weight in zip(constants, weight, strict=True) if not is_weight)
    read_only = (".text", ".rodata", ".data.rel.ro", ".ARM.exidx", ".ARM.extab")
    code = sum(
        size for name, size in sections.items() if name.startswith(read_only) and name != weights_section
    )
    writable = sum(
        size
        for name, size in sections.items()
        if name.startswith((".data", ".bss"))
        and not name.startswith(".data.rel.ro")
        and name != arena_section
    )
    padding = weights_bytes(program) - floats - integers
    flash = Flash(code - tokenizer_bytes, floats, integers, padding, tokenizer_bytes)
    ram = Ram(activation_bytes, program.workspace_bytes, writable)
    return flash, ram


def memory_fit(memory: BoardMemory, flash: Flash, ram: Ram, stack: Stack) -> dict[str, object]:
    """The board's memories and what the library needs of each. With external flash, the weights section
    (weights, indices, their alignment: `.rodata.NAME_weights`) goes there and the rest of the flash
    stays internal; without, all of it is internal. RAM: the library's and the stack estimate."""
    external = flash.weights + flash.indices + flash.padding if memory.external_flash_bytes else 0
    needs = {
        "flash": flash.total - external,
        "external_flash": external,
        "ram": ram.total + (stack.bytes_estimate or 0),
    }
    has = {
        "flash": memory.flash_bytes,
        "external_flash": memory.external_flash_bytes,
        "ram": memory.ram_bytes,
    }
    return {
        "bytes": has,
        "needed_bytes": needs,
        "fits": all(needs[name] <= has[name] for name in has),
    }


def write_report(
    project: Path,
    program: Program,
    target: Target,
    flash: Flash,
    ram: Ram,
    levels: list[LevelReport],
    verified: bool,
    board: Board | None = None,
    no_latency: str | None = None,
    stack: Stack | None = None,
    dense: DenseReference | None = None,
) -> dict[str, object]:
    """Write `report.json` and `REPORT.md` into `project`; returns the JSON. `board`: the one compile got
    (its levels' latencies and deadlines are in `levels`), `no_latency`: why the latencies are missing,
    `stack`: the stack estimate (None: not estimated), `dense`: onnxruntime on the dense model (None: not
    timed)."""
    stack = stack or Stack(None, "not estimated")
    dense = dense or DenseReference(None, "not timed")
    report = {
        "model": program.name,
        "prefix": program.prefix,
        "target": target.name,
        "cflags": list(target.cflags),
        "weights_format": program.weights_format,
        "verified": verified,
        "flash_bytes": {**asdict(flash), "total": flash.total},
        "ram_bytes": {
            **asdict(ram),
            "total": ram.total,
            "stack_bytes_estimate": stack.bytes_estimate,
            "stack_method": STACK_METHOD if stack.bytes_estimate is not None else None,
            "no_stack_estimate": stack.why,
        },
        "board": None
        if board is None
        else {
            "name": board.name,
            "target": board.target,
            "cycles_per_instruction": board.cycles_per_instruction,
            "no_latency": no_latency,
            "memory": None if board.memory is None else memory_fit(board.memory, flash, ram, stack),
        },
        "dense_reference": {
            "label": DENSE_LABEL,
            "onnxruntime_us": dense.onnxruntime_us,
            "no_dense_reference": dense.why,
        },
        "levels": [asdict(level) for level in levels],
    }
    (project / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (project / "REPORT.md").write_text(markdown(report))
    return report
