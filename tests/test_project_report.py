"""The project report of `rt3c compile` (report.json, REPORT.md, the printed summary) with a board: each
level's latency at its frequency on the board and its deadline. Built from constructed figures; the
compiled projects' reports are tested in test_compile.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rt3c.codegen.targets import get_target
from rt3c.core.boards import load_board
from rt3c.runtime_c.report import (
    DENSE_LABEL,
    DenseReference,
    Flash,
    LevelReport,
    Ram,
    board_latencies,
    onnxruntime_us,
    write_report,
)
from rt3c.runtime_c.report_text import summary
from rt3c.runtime_c.stack import STACK_METHOD, Stack, measure_stack, stack_estimate, stack_frames
from rt3c.stages.compile_report import dense_reference
from rt3c.stages.encoded_model import load_encoded

INSTRUCTIONS = [3_000_000, 2_000_000, 1_500_000]


def test_latency_at_each_levels_frequency() -> None:
    board = load_board("cortex-m7")
    latencies, deadlines, why = board_latencies(INSTRUCTIONS, board, get_target("cortex-m7"))
    # 3 M, 2 M, 1.5 M instructions x 1.2 cycles at 480, 300, 200 MHz
    assert latencies == pytest.approx([7.5, 8.0, 9.0]) and why is None
    assert deadlines == pytest.approx([1e3 * lv.deadline_s for lv in board.levels])


@pytest.mark.parametrize(
    ("board", "target", "instructions", "reason"),
    [
        (
            "rt3-default",
            "cortex-m7",
            INSTRUCTIONS,
            "board rt3-default is for aarch64, this build for cortex-m7",
        ),
        ("cortex-m7", "cortex-m7", [None, None, None], "no instruction counts"),
    ],
)
def test_no_latency_without_the_boards_own_count(
    board: str, target: str, instructions: list[int | None], reason: str
) -> None:
    """A count for another CPU, or none (host time, --no-verify), gives no latency; the deadlines stay."""
    profile = load_board(board)
    latencies, deadlines, why = board_latencies(instructions, profile, get_target(target))
    assert latencies == [None, None, None] and why is not None and reason in why
    assert deadlines == pytest.approx([1e3 * lv.deadline_s for lv in profile.levels])


def test_no_board() -> None:
    assert board_latencies(INSTRUCTIONS, None, get_target("cortex-m7")) == ([None] * 3, [None] * 3, None)


def test_report_with_a_board(tmp_path: Path) -> None:
    board, target = load_board("cortex-m7"), get_target("cortex-m7")
    latencies, deadlines, why = board_latencies(INSTRUCTIONS, board, target)
    levels = [
        LevelReport(f"L{i}", lv.frequency_khz, 0.5 + 0.1 * i, 1e-6, None, n, latency, deadline)
        for i, (lv, n, latency, deadline) in enumerate(
            zip(board.levels, INSTRUCTIONS, latencies, deadlines, strict=True)
        )
    ]
    program = SimpleNamespace(name="bert-tiny", prefix="bert_tiny", weights_format="incbin")
    report = write_report(
        tmp_path,
        program,
        target,
        Flash(100, 200, 30, 2),
        Ram(64, 32, 8),
        levels,
        True,
        board,
        why,  # type: ignore[arg-type]
    )
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["board"] == {
        "name": "cortex-m7",
        "target": "cortex-m7",
        "cycles_per_instruction": 1.2,
        "no_latency": None,
        # The weights section (weights, indices, alignment) in the external flash, the code internal.
        "memory": {
            "bytes": {"flash": 2 << 20, "external_flash": 64 << 20, "ram": 512 << 10},
            "needed_bytes": {"flash": 100, "external_flash": 232, "ram": 104},
            "fits": True,
        },
    }
    assert summary(report)[-1] == (
        "on cortex-m7: internal flash 100 of 2,097,152 B, external flash 232 of 67,108,864 B, "
        "RAM (with the stack) 104 of 524,288 B: fits"
    )
    assert report["levels"][0]["latency_ms"] == pytest.approx(7.5)
    deadline = f"{deadlines[0]:g}"
    assert summary(report)[1] == (
        f"L0: sparsity 0.500, 3,000,000 instructions per inference; 7.50 ms at 480 MHz on cortex-m7 (deadline {deadline} ms)"
    )
    text = (tmp_path / "REPORT.md").read_text()
    assert f"| 3,000,000 | 1.00x |  | 7.50 | {deadline} |" in text
    assert "comes from `rt3c search`'s latency.json or benchmarks/bench_runtime.py." in text
    assert report["dense_reference"]["no_dense_reference"] == "not timed"
    assert "at its frequency on board cortex-m7 (1.2 cycles per instruction)." in text


GCC_SU = "p/m_model.c:10:5:m_invoke\t48\tstatic\np/m_model.c:3:7:TVMBackendAllocWorkspace\t16\tstatic\n"
KERNELS_SU = "kernels.c:5:17:__tvm_ffi_a\t176\tstatic\nkernels.c:9:17:__tvm_ffi_b\t336\tdynamic,bounded\n"


def test_stack_estimate_rule() -> None:
    """invoke's frame + the largest kernel entry's + the largest helper's (here the allocator); clang's
    lines have no column."""
    runtime, kernels = stack_frames(GCC_SU), stack_frames(KERNELS_SU)
    assert runtime["m_invoke"] == (48, "static") and kernels["__tvm_ffi_b"] == (336, "dynamic,bounded")
    assert stack_estimate("m", runtime, kernels) == Stack(48 + 336 + 16)
    assert stack_frames("a.c:1:f\t8\tstatic\n") == {"f": (8, "static")}
    unbounded = stack_frames("kernels.c:5:17:__tvm_ffi_c\t64\tdynamic\n")
    assert stack_estimate("m", runtime, {**kernels, **unbounded}).bytes_estimate is None
    assert stack_estimate("other", runtime, kernels).why == "other_invoke not in the -fstack-usage output"


MAKEFILE = """SRC ?= .
CC = cc
CFLAGS = -O2 -std=c99 -mthumb
m_model.o: $(SRC)/m_model.c
\t$(CC) $(CFLAGS) -c $< -o $@
kernels.o: kernels.c
\t$(CC) $(CFLAGS) -c $< -o $@
"""
MODEL_C = """typedef int (*k_t)(volatile char *);
int __tvm_ffi_a(volatile char *p);
static const k_t table[1] = {__tvm_ffi_a};
int m_invoke(int n) { volatile char b[40]; b[0] = (char)n; return table[0](b); }
"""
KERNELS_C = "int __tvm_ffi_a(volatile char *p) { volatile char b[200]; b[p[0]] = 1; return b[3]; }\n"


def test_measure_stack_of_a_project(tmp_path: Path) -> None:
    """The Makefile's rules with -fstack-usage added to its compiler, in a temporary folder: the estimate
    is the sum of the frames the compiler reports, and no .su file reaches the project."""
    target = get_target("cortex-m4")
    if shutil.which(target.cc) is None:
        pytest.skip(f"{target.cc} not installed")
    for name, text in (("Makefile", MAKEFILE), ("m_model.c", MODEL_C), ("kernels.c", KERNELS_C)):
        (tmp_path / name).write_text(text)
    stack = measure_stack(tmp_path, "m", target)
    assert stack.bytes_estimate is not None and 240 <= stack.bytes_estimate < 400, stack
    assert not list(tmp_path.glob("*.su")) and not list(tmp_path.glob("*.o"))
    host = measure_stack(tmp_path, "m", get_target("host"))
    assert host.bytes_estimate is None and "LLVM objects" in (host.why or "")


def test_report_stack_line(tmp_path: Path) -> None:
    program = SimpleNamespace(name="m", prefix="m", weights_format="incbin")
    levels = [LevelReport("L0", None, None, None, 10.0, None)]
    args = (tmp_path, program, get_target("host"), Flash(1, 2, 3, 0), Ram(4, 5, 6), levels, True)
    report = write_report(*args, stack=Stack(400))  # type: ignore[arg-type]
    assert report["ram_bytes"]["stack_bytes_estimate"] == 400
    assert report["ram_bytes"]["total"] == 15 and report["ram_bytes"]["stack_method"] == STACK_METHOD
    text = (tmp_path / "REPORT.md").read_text()
    assert f"Stack of one inference, estimated: 400 bytes ({STACK_METHOD})." in text
    report = write_report(*args, stack=Stack(None, "the host kernels are LLVM objects"))  # type: ignore[arg-type]
    assert report["ram_bytes"]["stack_bytes_estimate"] is None
    assert "Stack: no estimate (the host kernels are LLVM objects)." in (tmp_path / "REPORT.md").read_text()


def test_board_memory_without_external_flash(tmp_path: Path) -> None:
    """Without external flash every byte of the library's flash is internal; RAM counts the stack."""
    program = SimpleNamespace(name="m", prefix="m", weights_format="incbin")
    levels = [LevelReport("L0", None, None, None, None, 1000)]
    flash, ram = Flash(100_000, 1_000_000, 0, 0), Ram(100_000, 30_000, 1_000)
    board = load_board("cortex-m4")
    args = (tmp_path, program, get_target("cortex-m4"), flash, ram, levels, True, board)
    memory = write_report(*args, stack=Stack(2_000))["board"]["memory"]  # type: ignore[arg-type, index]
    assert memory["needed_bytes"] == {"flash": 1_100_000, "external_flash": 0, "ram": 133_000}
    assert not memory["fits"]  # 1,100,000 B of flash > 1 MiB, 133,000 B of RAM > 128 KiB
    assert (
        "Memory on cortex-m4: internal flash 1,100,000 of 1,048,576 B, RAM (with the stack) 133,000 of "
        "131,072 B: does NOT fit." in (tmp_path / "REPORT.md").read_text()
    )


def _dense_model(path: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 64])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_onnxruntime_dense_time(tmp_path: Path) -> None:
    """One thread, processor time per inference; a model whose inputs are not the compiled one's says so;
    a dense model compiled alone is its own reference."""
    model = _dense_model(tmp_path / "dense.onnx")
    us = onnxruntime_us(model, {"x": np.ones((16, 64), np.float32)}, repeats=5, runs=2)
    assert isinstance(us, float) and 0 < us < 100_000
    why = onnxruntime_us(model, {"input_ids": np.ones((1, 16), np.int64)}, repeats=1, runs=1)
    assert why == "the dense model's inputs x are not the compiled model's"
    assert dense_reference(load_encoded(model), exported_with_plan=False) == model


def test_report_speedup_vs_dense(tmp_path: Path) -> None:
    program = SimpleNamespace(name="m", prefix="m", weights_format="incbin")
    levels = [
        LevelReport("L0", None, 0.5, None, 10.0, None, speedup_vs_dense=3.0),
        LevelReport("L1", None, 0.8, None, 5.0, None, speedup_vs_dense=6.0),
    ]
    args = (tmp_path, program, get_target("host"), Flash(1, 2, 3, 0), Ram(4, 5, 6), levels, True)
    report = write_report(*args, dense=DenseReference(30.0))  # type: ignore[arg-type]
    assert report["dense_reference"] == {
        "label": DENSE_LABEL,
        "onnxruntime_us": 30.0,
        "no_dense_reference": None,
    }
    assert [level["speedup_vs_dense"] for level in report["levels"]] == [3.0, 6.0]
    text = (tmp_path / "REPORT.md").read_text()
    assert f"speedup {DENSE_LABEL} |" in text and "| 2.00x | 6.00x |" in text
    assert "onnxruntime dense: 30.0 µs." in text and "latency.json" not in text
    why = "no_dense_reference: compiled from an encoded model, whose dense source compile did not get"
    report = write_report(*args, dense=DenseReference(None, why))  # type: ignore[arg-type]
    assert report["dense_reference"]["no_dense_reference"] == why
    assert f"not measured: {why}." in (tmp_path / "REPORT.md").read_text()
