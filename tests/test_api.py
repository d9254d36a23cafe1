"""The Python API as a notebook would use it: export, plan, encode, compile, run, read the memory report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import rt3c
from rt3c.core.errors import UserError
from rt3c.core.onnx_io import deterministic_feeds
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
