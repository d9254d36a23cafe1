"""What the C runtime is generated from: tensors, and per level one straight-line list of kernel calls.

Codegen lowers a model to a `Program`; `rt3c.runtime_c.project.render_project` turns it into C. Every
kernel follows TVM's packed calling convention (`int32_t __tvm_ffi_<symbol>(void *self, void *args,
int32_t num_args, void *result)`, each argument a `DLTensor *`), so the runtime holds no math: it only
owns the memory and calls the active level's kernel table in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from rt3c.core.errors import UserError
from rt3c.runtime_c.arena import ArenaPlan, Lifetime, plan_arena

if TYPE_CHECKING:
    from rt3c.runtime_c.tokenizer import TokenizerTables

Storage = Literal["input", "output", "activation", "constant"]

C_TYPES = {
    "float32": "float",
    "int64": "int64_t",
    "int32": "int32_t",
    "int16": "int16_t",
    "int8": "int8_t",
    "uint32": "uint32_t",
    "uint16": "uint16_t",
    "uint8": "uint8_t",
    "bool": "uint8_t",
}
# DLPack's type code enumerators (dlpack.h), by numpy kind.
DL_TYPE_CODES = {"float": "kDLFloat", "int": "kDLInt", "uint": "kDLUInt", "bool": "kDLBool"}


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    storage: Storage
    data: np.ndarray | None = None
    """The value of a constant (weights, sparse indices); None for everything else."""

    def __post_init__(self) -> None:
        if self.dtype not in C_TYPES:
            raise UserError(
                f"{self.storage} {self.name}: dtype {self.dtype} is not supported by the C runtime "
                f"(it takes {', '.join(C_TYPES)})"
            )

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    @property
    def c_type(self) -> str:
        return C_TYPES[self.dtype]

    @property
    def dl_dtype(self) -> tuple[str, int]:
        """(DLPack type code enumerator, bits)."""
        kind = "bool" if self.dtype == "bool" else self.dtype.rstrip("0123456789")
        return DL_TYPE_CODES[kind], np.dtype(self.dtype).itemsize * 8


@dataclass(frozen=True)
class Call:
    symbol: str
    """The kernel's name: the generated code calls `__tvm_ffi_<symbol>`."""
    args: tuple[str, ...]
    """Tensor names, inputs first then outputs, in the order the kernel takes them."""


@dataclass
class Program:
    name: str
    levels: list[str]
    frequencies_khz: list[int | None]
    """Per level, the lowest CPU frequency (kHz) at which the plan uses it; see Plan.level_for_frequency."""
    tensors: dict[str, Tensor]
    inputs: list[str]
    outputs: list[str]
    steps: list[list[Call]]
    """One entry per step; each holds one Call per level (the same Call where levels do not differ)."""
    workspace_bytes: int = 0
    """Scratch the kernels may request through TVMBackendAllocWorkspace (0: none)."""
    writes: list[tuple[str, ...]] = field(default_factory=list)
    """Per step, the tensors it writes (the others it only reads); filled by `add_step`."""
    index_limits: dict[str, int] = field(default_factory=dict)
    """Inputs whose values index a table (token ids feeding a Gather): input -> the table's row count.
    rt3_invoke refuses an inference with any such value outside [0, limit) before a kernel runs."""
    weights_format: str = "incbin"
    """`incbin` or `c`: see `rt3c.runtime_c.project.WEIGHTS_FORMATS`."""
    prefix: str = "rt3"
    """What every external name of the generated library starts with: `<prefix>_invoke`, the macros
    `<PREFIX>_...`, the files `<prefix>_model.h`, ... (a lower-case C identifier, see `check_prefix`)."""
    tokenizer: TokenizerTables | None = None
    """The vocabulary of the C tokenizer the project carries (`rt3c compile --tokenizer`), if any."""

    def add_step(self, per_level: list[Call], writes: tuple[str, ...]) -> None:
        assert len(per_level) == len(self.levels)
        self.steps.append(per_level)
        self.writes.append(writes)

    def lifetimes(self) -> list[Lifetime]:
        """Arena lifetimes of every non-constant tensor, over all levels' calls.

        Inputs are copied in before step 0 and outputs out after the last step, so an input lives from
        step -1 and an output until one past the last step.
        """
        first: dict[str, int] = {name: -1 for name in self.inputs}
        last: dict[str, int] = {name: len(self.steps) for name in self.outputs}
        for index, (calls, writes) in enumerate(zip(self.steps, self.writes, strict=True)):
            for name in {arg for call in calls for arg in call.args}:
                if self.tensors[name].storage == "constant":
                    continue
                if name in writes:
                    first.setdefault(name, index)
                last[name] = max(last.get(name, index), index)
        return [
            Lifetime(name, self.tensors[name].nbytes, first.get(name, 0), last.get(name, first.get(name, 0)))
            for name in self.tensors
            if self.tensors[name].storage != "constant"
        ]

    def plan_arena(self) -> ArenaPlan:
        return plan_arena(self.lifetimes())
