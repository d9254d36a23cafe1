"""The Python API as a notebook would use it: export, plan, encode, compile, run, read the memory report."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import rt3c
from rt3c.core.errors import SettingError, UserError
from rt3c.core.onnx_io import deterministic_feeds
from rt3c.stages.compile import compile_model
from rt3c.stages.reference import run_onnx


def test_export_plan_encode_compile_run(tmp_path: Path) -> None:
    exported = rt3c.export("bert-tiny", tmp_path / "model.onnx", seq_len=16)
    plan = rt3c.plan(
        exported.onnx_path,
        tmp_path / "plan.json",
        sparsities=[0.5, 0.75],
        tile=(8, 8),
        frequencies_khz=[1_400_000, 800_000],
    )
    assert [level.name for level in plan.levels] == ["L0", "L1"]
    encoded = rt3c.encode(exported.onnx_path, tmp_path / "plan.json", tmp_path / "model.rt3.onnx")
    project = rt3c.compile(encoded.path, tmp_path / "project", plan=tmp_path / "plan.json")

    assert len(project.max_abs_diff) == 2 and max(project.max_abs_diff) <= 1e-4
    assert project.memory["flash_bytes"]["total"] > project.memory["flash_bytes"]["weights"] > 0
    feeds = deterministic_feeds(onnx.load(str(encoded.path)))
    assert sorted(project.input_names) == sorted(feeds)
    for level in (0, 1):
        (expected,) = run_onnx(encoded.path, {**feeds, "rt3c_level": np.array(level, dtype=np.int64)})
        (by_name,) = project.run(level, feeds).values()
        (in_order,) = project.run(level, [feeds[name] for name in project.input_names]).values()
        assert np.max(np.abs(by_name - expected)) <= 1e-4
        assert np.array_equal(by_name, in_order)
    with pytest.raises(UserError, match=r"inputs\[0\]: shape"):
        project.run(0, [np.zeros((1, 3), np.int64) for _ in project.input_names])


def _linear_model(tmp_path: Path) -> Path:
    """y = x @ w + b: a dense model of one linear layer, 48 -> 40."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((48, 40)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(40).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 48])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 40])],
        [weight, bias],
    )
    path = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_generate_writes_a_cortex_m_project_with_no_compiler_and_no_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tools_path = os.environ["PATH"]
    (tmp_path / "no-tools").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))  # no gcc, no arm-none-eabi-gcc, no qemu, no make
    project = rt3c.generate(_linear_model(tmp_path), tmp_path / "project", target="cortex-m4", prefix="tiny")

    files = {path.name for path in project.directory.iterdir()}
    generated = {
        "tiny_model.h",
        "tiny_model.c",
        "tiny_weights.S",
        "tiny_weights.bin",
        "tiny.exports",
        "main.c",
    }
    build_files = {"kernels.c", "Makefile", "CMakeLists.txt", "toolchain.cmake", "mps2.ld", "startup.c"}
    assert generated | build_files | {"rt3c-build.json"} <= files
    assert not {"libtiny.a", "rt3_main", "report.json"} & files  # nothing built, nothing measured
    assert (
        (project.directory / "tiny_weights.bin").stat().st_size == project.weight_bytes == (48 * 40 + 40) * 4
    )
    header = (project.directory / "tiny_model.h").read_text()
    assert f"#define TINY_ARENA_BYTES {project.memory_bytes}\n" in header
    assert "#define TINY_INPUT_X_ELEMENTS 48\n" in header and "#define TINY_OUTPUT_Y_ELEMENTS 40\n" in header
    assert project.memory_bytes >= project.arena_bytes >= project.arena_lower_bound >= 40 * 4

    # What was generated builds with the cross compiler alone, later.
    if shutil.which("arm-none-eabi-gcc", path=tools_path):
        make = ["make", "-s", "libtiny.a"]
        subprocess.run(make, cwd=project.directory, env={**os.environ, "PATH": tools_path}, check=True)
        assert (project.directory / "libtiny.a").stat().st_size > 0


def test_a_project_that_is_not_built_is_not_verified(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match="verify True: needs a build"):
        compile_model(_linear_model(tmp_path), tmp_path / "project", build=False, verify=True)
    assert not (tmp_path / "project").exists()
