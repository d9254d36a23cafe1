"""Render a `Program` into a C project: API header, call sequence, weights, example main.

The build files (Makefile, CMake, a board's linker script) come from `rt3c.runtime_c.build_files`.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import jinja2
import numpy as np

import rt3c
from rt3c.core.errors import SettingError
from rt3c.runtime_c.arena import ALIGNMENT as ARENA_ALIGNMENT
from rt3c.runtime_c.filters import C_KEYWORDS, FILTERS, c_identifier
from rt3c.runtime_c.program import Program, Tensor

TEMPLATES = Path(__file__).resolve().parent / "templates" / "project"
WEIGHTS_ALIGNMENT = ARENA_ALIGNMENT  # TVM's kernels use aligned vector loads
MAIN_EXIT_INPUT_OUT_OF_RANGE = 3
"""The exit code of the example `rt3_main` when rt3_invoke refuses an input (RT3_ERROR_INPUT_OUT_OF_RANGE)."""


@dataclass(frozen=True)
class CTensor:
    """A tensor as the templates see it: its index in the generated arrays and where its bytes live."""

    index: int
    name: str
    """The model's name of the tensor: only ever rendered inside comments."""
    identifier: str | None
    """Inputs and outputs: the C identifier of the parameter (and, upper-cased, of its macros)."""
    shape: tuple[int, ...]
    dtype: str
    c_type: str
    dl_code: str
    dl_bits: int
    elements: int
    nbytes: int
    constant: bool
    offset: int = 0
    """Where a non-constant tensor lives in the arena."""
    file_offset: int = 0
    """Where a constant lives in rt3_weights.bin."""
    index_limit: int | None = None
    """Inputs that index a table: rt3_invoke refuses any value outside [0, index_limit)."""
    data: np.ndarray | None = None
    """A constant's values (rendered only as const C arrays, `--weights-format c`)."""


def environment() -> jinja2.Environment:
    """The templates' environment: undefined names are errors, and values go through typed filters only."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(FILTERS)
    return env


FileKey = TypeVar("FileKey")


def render_all(
    env: jinja2.Environment, outputs: dict[FileKey, tuple[str, dict[str, object]]]
) -> dict[FileKey, str]:
    """Render every file first and write none until all rendered: a refused value leaves no half project."""
    return {
        output: env.get_template(template).render(context) for output, (template, context) in outputs.items()
    }


@dataclass(frozen=True)
class ProjectFiles:
    """The names of a generated project's library files, which carry its prefix."""

    header: str
    source: str
    weights_source: str
    """`incbin`: assembly that pulls in `weights_binary`; `c`: const C arrays."""
    weights_binary: str | None
    exports: str
    """The API symbols, one a line: all that stays global in the prelinked library object."""
    library: str
    tokenizer_header: str
    tokenizer_source: str


WEIGHTS_FORMATS = ("incbin", "c")
"""How the weights reach the library: `incbin` (assembly with GNU `.incbin` of a binary file: fast to build)
or `c` (const C arrays: any C99 toolchain)."""


def project_files(prefix: str, weights_format: str = "incbin") -> ProjectFiles:
    incbin = weights_format == "incbin"
    return ProjectFiles(
        header=f"{prefix}_model.h",
        source=f"{prefix}_model.c",
        weights_source=f"{prefix}_weights.S" if incbin else f"{prefix}_weights.c",
        weights_binary=f"{prefix}_weights.bin" if incbin else None,
        exports=f"{prefix}.exports",
        library=f"lib{prefix}.a",
        tokenizer_header=f"{prefix}_tokenizer.h",
        tokenizer_source=f"{prefix}_tokenizer.c",
    )


PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


def check_prefix(prefix: str) -> str:
    """`--prefix`: a lower-case C identifier of at most 32 characters that is not a keyword (upper-cased,
    it starts the macros, so one case keeps two prefixes from sharing macros)."""
    if not PREFIX_PATTERN.match(prefix) or prefix in C_KEYWORDS:
        raise SettingError(
            "prefix",
            "expected a lower-case C identifier ([a-z][a-z0-9_]*, at most 32 characters, not a C keyword)",
            f"{prefix!r:.40}",
        )
    return prefix


def default_prefix(model_name: str) -> str:
    """The prefix for a model named `model_name` (`bert-tiny` -> `bert_tiny`)."""
    words = re.sub(r"[^a-z0-9]+", "_", model_name.lower()).strip("_")
    prefix = words if words[:1].isalpha() else f"m_{words}"
    prefix = prefix[:32].rstrip("_")
    return prefix if prefix not in C_KEYWORDS else f"{prefix}_model"


def render_project(program: Program, out_dir: Path) -> dict[str, object]:
    """Write the header, source, weights (assembly and binary), exports and example main into `out_dir`.

    Returns what the build and the report need: the arena plan and the bytes of weights.
    """
    arena = program.plan_arena()
    names = list(program.tensors)
    index_of = {name: index for index, name in enumerate(names)}
    taken: set[str] = set()
    identifiers = {
        name: c_identifier(name, taken, program.prefix) for name in program.inputs + program.outputs
    }
    file_offset = 0
    tensors: list[CTensor] = []
    blobs: list[tuple[int, bytes]] = []
    for index, name in enumerate(names):
        tensor: Tensor = program.tensors[name]
        code, bits = tensor.dl_dtype
        constant = tensor.storage == "constant"
        offset = this_file_offset = 0
        if constant:
            assert tensor.data is not None
            file_offset = -(-file_offset // WEIGHTS_ALIGNMENT) * WEIGHTS_ALIGNMENT
            payload = np.ascontiguousarray(tensor.data, dtype=tensor.dtype).tobytes()
            blobs.append((file_offset, payload))
            this_file_offset = file_offset
            file_offset += len(payload)
        else:
            offset = arena.offsets[name]
        tensors.append(
            CTensor(
                index=index,
                name=name,
                identifier=identifiers.get(name),
                shape=tensor.shape,
                dtype=tensor.dtype,
                c_type=tensor.c_type,
                dl_code=code,
                dl_bits=bits,
                elements=int(np.prod(tensor.shape, dtype=np.int64)),
                nbytes=tensor.nbytes,
                constant=constant,
                offset=offset,
                file_offset=this_file_offset,
                index_limit=program.index_limits.get(name),
                data=tensor.data,
            )
        )

    # The kernels' scratch follows the activations in the model's memory, aligned like every buffer.
    scratch_offset = -(-max(arena.size, 1) // ARENA_ALIGNMENT) * ARENA_ALIGNMENT

    # Distinct calls get one argument array each; level tables index into them.
    calls: list[dict[str, object]] = []
    call_index: dict[tuple[str, tuple[str, ...]], int] = {}
    level_tables: list[list[int]] = [[] for _ in program.levels]
    for per_level in program.steps:
        for level, call in enumerate(per_level):
            key = (call.symbol, call.args)
            if key not in call_index:
                call_index[key] = len(calls)
                calls.append({"symbol": call.symbol, "args": [index_of[arg] for arg in call.args]})
            level_tables[level].append(call_index[key])

    context = {
        "name": program.name,
        "prefix": program.prefix,
        "macro": program.prefix.upper(),
        "version": rt3c.__version__,
        "target": "any",
        "levels": program.levels,
        "frequencies_khz": program.frequencies_khz,
        "inputs": [tensors[index_of[name]] for name in program.inputs],
        "outputs": [tensors[index_of[name]] for name in program.outputs],
        "tensors": tensors,
        "constants": [t for t in tensors if t.constant],
        "symbols": sorted({str(call["symbol"]) for call in calls}),
        "calls": calls,
        "level_tables": level_tables,
        "arena": arena,
        "arena_tensors": [t for t in tensors if not t.constant],
        "scratch_offset": scratch_offset,
        "arena_bytes": scratch_offset + program.workspace_bytes,
        "workspace_bytes": program.workspace_bytes,
        "exit_input_out_of_range": MAIN_EXIT_INPUT_OUT_OF_RANGE,
        "tokenizer": program.tokenizer is not None,
    }
    files = project_files(program.prefix, program.weights_format)
    weights_template = "rt3_weights.S.j2" if files.weights_binary else "weights.c.j2"
    outputs: dict[str, tuple[str, dict[str, object]]] = {
        files.header: ("rt3_model.h.j2", context),
        files.source: ("rt3_model.c.j2", context),
        files.weights_source: (weights_template, context),
        files.exports: ("exports.j2", context),
        "main.c": ("main.c.j2", context),
    }
    if program.tokenizer is not None:
        tokenizer = program.tokenizer.context(program.prefix)
        outputs[files.tokenizer_header] = ("tokenizer.h.j2", tokenizer)
        outputs[files.tokenizer_source] = ("tokenizer.c.j2", tokenizer)
        outputs["rt3_tokenize.c"] = ("rt3_tokenize.c.j2", tokenizer)
    texts = render_all(environment(), outputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    for output, text in texts.items():
        (out_dir / output).write_text(text)
    if files.weights_binary:
        with (out_dir / files.weights_binary).open("wb") as handle:
            for offset, payload in blobs:
                handle.write(b"\0" * (offset - handle.tell()))
                handle.write(payload)
    _copy_dlpack_header(out_dir)
    return {
        "arena": arena,
        "weight_bytes": file_offset,
        "memory_bytes": scratch_offset + program.workspace_bytes,
    }


def _copy_dlpack_header(out_dir: Path) -> None:
    """DLTensor's definition, from the tvm-ffi wheel (Apache-2.0), so the project builds without TVM."""
    import tvm_ffi

    source = Path(tvm_ffi.__file__).resolve().parent / "include" / "dlpack" / "dlpack.h"
    (out_dir / "dlpack").mkdir(exist_ok=True)
    shutil.copyfile(source, out_dir / "dlpack" / "dlpack.h")


def weights_bytes(program: Program) -> int:
    """Bytes of the program's constants as the library lays them out (each array aligned)."""
    end = 0
    for tensor in program.tensors.values():
        if tensor.storage == "constant":
            end = -(-end // WEIGHTS_ALIGNMENT) * WEIGHTS_ALIGNMENT + tensor.nbytes
    return end
