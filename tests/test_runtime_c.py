"""The generated C runtime on real TVM kernels: level tables, arena, API errors, warnings-as-errors builds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from rt3c.runtime_c.arena import ALIGNMENT
from rt3c.runtime_c.program import Call, Program, Tensor
from rt3c.runtime_c.project import render_project

CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I."]


def _toy_kernels(out: Path) -> Path:
    """Three small kernels: c = a + b, and c = a * 2 (level 0) or a * 3 (level 1)."""

    @T.prim_func
    def toy_add(a: T.Buffer((4,), "float32"), b: T.Buffer((4,), "float32"), c: T.Buffer((4,), "float32")):
        T.func_attr({"global_symbol": "toy_add", "tirx.noalias": True})
        for i in range(4):
            c[i] = a[i] + b[i]

    @T.prim_func
    def toy_scale2(a: T.Buffer((4,), "float32"), c: T.Buffer((4,), "float32")):
        T.func_attr({"global_symbol": "toy_scale2", "tirx.noalias": True})
        for i in range(4):
            c[i] = a[i] * T.float32(2)

    @T.prim_func
    def toy_scale3(a: T.Buffer((4,), "float32"), c: T.Buffer((4,), "float32")):
        T.func_attr({"global_symbol": "toy_scale3", "tirx.noalias": True})
        for i in range(4):
            c[i] = a[i] * T.float32(3)

    module = tvm.IRModule({"toy_add": toy_add, "toy_scale2": toy_scale2, "toy_scale3": toy_scale3})
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        executable = tvm.compile(module, target=target)
    path = out / "kernels.o"
    executable.mod.write_to_file(str(path))
    return path


def _toy_program() -> Program:
    program = Program(
        name="toy",
        levels=["L0", "L1"],
        frequencies_khz=[1_000_000, 500_000],
        tensors={
            "x": Tensor("x", (4,), "float32", "input"),
            "bias": Tensor("bias", (4,), "float32", "constant", np.array([1, 2, 3, 4], np.float32)),
            "t": Tensor("t", (4,), "float32", "activation"),
            "y": Tensor("y", (4,), "float32", "output"),
        },
        inputs=["x"],
        outputs=["y"],
        steps=[],
    )
    program.add_step([Call("toy_add", ("x", "bias", "t"))] * 2, ("t",))
    program.add_step([Call("toy_scale2", ("t", "y")), Call("toy_scale3", ("t", "y"))], ("y",))
    return program


MAIN = r"""
#include <stdio.h>
#include "rt3_model.h"
static double memory[(RT3_ARENA_BYTES + 2 * RT3_ARENA_ALIGNMENT) / sizeof(double)];
int main(void) {
  float x[4] = {1, 1, 1, 1}, y[4];
  int level, used;
  unsigned char *aligned = (unsigned char *)(((uintptr_t)memory + RT3_ARENA_ALIGNMENT - 1) & ~(uintptr_t)(RT3_ARENA_ALIGNMENT - 1));
  if (rt3_invoke(x, y) != RT3_ERROR_NOT_INITIALIZED) return 10;
  if (rt3_init() != RT3_OK) return 11;
  if (rt3_set_level(RT3_NUM_LEVELS) != RT3_ERROR_BAD_LEVEL || rt3_set_level(-1) != RT3_ERROR_BAD_LEVEL) return 12;
  if (rt3_invoke(NULL, y) != RT3_ERROR_BAD_ARGUMENT || rt3_invoke(x, NULL) != RT3_ERROR_BAD_ARGUMENT) return 13;
  for (level = 0; level < RT3_NUM_LEVELS; ++level) {
    if (rt3_set_level(level) != RT3_OK || rt3_invoke(x, y) != RT3_OK) return 14;
    printf("%d %g %g %g %g\n", rt3_active_level(), y[0], y[1], y[2], y[3]);
  }
  rt3_on_frequency(700000); /* between the levels' 1 GHz and 500 MHz: the sparser level */
  rt3_invoke(x, y);
  printf("%d %g\n", rt3_active_level(), y[0]);
  rt3_on_frequency(2000000);
  rt3_invoke(x, y);
  printf("%d %g\n", rt3_active_level(), y[0]);
  /* The rule at its edges: a level's own frequency picks it; below the sparsest level's, the sparsest. */
  rt3_on_frequency(1000000);
  rt3_invoke(x, y);
  printf("%d", rt3_active_level());
  rt3_on_frequency(999999);
  rt3_invoke(x, y);
  printf(" %d", rt3_active_level());
  rt3_on_frequency(1);
  rt3_invoke(x, y);
  printf(" %d\n", rt3_active_level());
  printf("arena %zu\n", rt3_arena_bytes());
  /* The caller's memory: checked (a status, and the model is then uninitialized), then used. */
  if (rt3_init_with_arena(NULL, RT3_ARENA_BYTES) != RT3_ERROR_BAD_ARGUMENT) return 15;
  if (rt3_invoke(x, y) != RT3_ERROR_NOT_INITIALIZED) return 16;
  if (rt3_init_with_arena(aligned + 8, RT3_ARENA_BYTES) != RT3_ERROR_ARENA_MISALIGNED) return 17;
  if (rt3_init_with_arena(aligned, RT3_ARENA_BYTES - 1) != RT3_ERROR_ARENA_TOO_SMALL) return 18;
  if (rt3_invoke(x, y) != RT3_ERROR_NOT_INITIALIZED) return 19;
  if (rt3_init_with_arena(aligned, RT3_ARENA_BYTES) != RT3_OK || rt3_set_level(1) != RT3_OK) return 20;
  if (rt3_invoke(x, y) != RT3_OK) return 21;
  for (level = 0, used = 0; level < RT3_ARENA_BYTES; ++level) used |= aligned[level];
  printf("caller %d %g %g %g %g %d\n", rt3_active_level(), y[0], y[1], y[2], y[3], used != 0);
  return 0;
}
"""


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_toy_program_runs_every_level(tmp_path: Path, compiler: str) -> None:
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is not installed")
    kernels = _toy_kernels(tmp_path)
    info = render_project(_toy_program(), tmp_path)
    (tmp_path / "main.c").write_text(MAIN)
    sources = ["main.c", "rt3_model.c", "rt3_weights.S", "-Wa,-I.", str(kernels)]
    subprocess.run([compiler, *CFLAGS, *sources, "-o", "main"], cwd=tmp_path, check=True)
    output = subprocess.run(["./main"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    lines = output.splitlines()
    assert lines[0] == "0 4 6 8 10"  # (1 + bias) * 2
    assert lines[1] == "1 6 9 12 15"  # (1 + bias) * 3
    assert lines[2] == "1 6"
    assert lines[3] == "0 4"
    # x dies after step 0 and y is born at step 1: they share bytes, so the arena is two (aligned) tensors.
    assert info["arena"].size == info["arena"].lower_bound == 2 * ALIGNMENT
    assert lines[4] == "0 1 1"
    assert lines[5] == f"arena {2 * ALIGNMENT}"
    assert lines[6] == "caller 1 6 9 12 15 1"


def test_descriptors_and_shapes_are_const(tmp_path: Path) -> None:
    """Without position-independent code (as on a microcontroller) the library has no initialized RAM:
    descriptors, shapes, argument and level tables are read-only; RAM is the arena, the arena tensors'
    descriptors (filled in at init) and the level state, all zero-initialized."""
    render_project(_toy_program(), tmp_path)
    subprocess.run(["gcc", *CFLAGS, "-fno-pic", "-c", "rt3_model.c", "-o", "m.o"], cwd=tmp_path, check=True)
    sizes = subprocess.run(["size", "-A", "m.o"], cwd=tmp_path, check=True, capture_output=True, text=True)
    sections = {
        line.split()[0]: int(line.split()[1]) for line in sizes.stdout.splitlines()[2:] if line.strip()
    }
    assert not {name: size for name, size in sections.items() if name.startswith(".data") and size}
    assert sections[".bss.rt3_arena"] == 2 * ALIGNMENT
    symbols = subprocess.run(["nm", "m.o"], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    in_ram = {line.split()[2] for line in symbols.splitlines() if line.split()[1] in "bBdD"}
    arena_tensors = {
        "rt3_tensor_0",
        "rt3_tensor_2",
        "rt3_tensor_3",
    }  # x, t, y (tensor 1 is the constant bias)
    state = {"rt3_arena", "rt3_default_arena", "rt3_initialized", "rt3_requested_level", "rt3_running_level"}
    assert in_ram == arena_tensors | state


def test_library_has_no_heap_and_no_printf(tmp_path: Path) -> None:
    render_project(_toy_program(), tmp_path)
    subprocess.run(["gcc", *CFLAGS, "-c", "rt3_model.c", "-o", "rt3_model.o"], cwd=tmp_path, check=True)
    symbols = subprocess.run(
        ["nm", "-u", "rt3_model.o"], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    undefined = {line.split()[-1] for line in symbols.stdout.splitlines()}
    assert not undefined & {"malloc", "calloc", "realloc", "free", "printf", "puts", "fprintf"}
    assert {"__tvm_ffi_toy_add", "__tvm_ffi_toy_scale2", "__tvm_ffi_toy_scale3"} <= undefined
