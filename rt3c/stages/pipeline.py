"""The whole chain, as the demo runs it: each stage's entry point called in order on files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import onnx
from rich.table import Table

from rt3c.core.boards import load_board
from rt3c.core.onnx_io import deterministic_feeds
from rt3c.core.progress import stdout, step
from rt3c.runtime_c.report_text import summary
from rt3c.stages.compile import compile_model
from rt3c.stages.encode import encode_model, plan_model
from rt3c.stages.export import export_model
from rt3c.stages.inspect_model import inspect_model
from rt3c.stages.models import load_model
from rt3c.stages.reference import run_onnx
from rt3c.stages.run import run_project

DEMO_SPARSITIES = [0.5, 0.7, 0.8]
DEMO_BOARD = "rt3-default"


def run_demo(model_ref: str, out: Path, target: str = "aarch64") -> None:
    """export -> one-shot plan (3 levels, RT3's default board) -> encode -> compile -> run every level."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_ref)
    exported = export_model(model, out / "model.onnx")
    board = load_board(DEMO_BOARD)
    plan_path = out / "plan.json"
    plan = plan_model(
        exported.onnx_path,
        plan_path,
        sparsities=DEMO_SPARSITIES,
        tile=(4, 4),
        patterns=8,
        frequencies_khz=[level.frequency_khz for level in board.levels],
    )
    encoded = encode_model(exported.onnx_path, plan_path, out / "model.rt3.onnx")
    report = inspect_model(encoded.path)
    project = out / f"c-{target}"
    if project.exists():  # the demo's own output from an earlier run
        shutil.rmtree(project)
    compiled = compile_model(encoded.path, project, target_name=target, plan_path=plan_path)

    # Run every level of the target build once more on a fresh input, timed, against onnxruntime.
    feeds = deterministic_feeds(onnx.load(str(exported.onnx_path)), seed=1)
    inputs = []
    for name, array in feeds.items():
        np.save(out / f"{name}.npy", array)
        inputs.append(out / f"{name}.npy")
    (dense,) = run_onnx(exported.onnx_path, feeds)
    table = Table(
        "level",
        "MHz",
        "sparsity",
        "KB",
        "/dense",
        "run s",
        "|C-ORT|",
        "|C-dense|",
        title=f"rt3c demo: {model.name} on {target}, {len(plan.layers)} sparse layers, board {board.name}",
    )
    totals = report.level_totals()
    for level in range(len(plan.levels)):
        with step(f"run level {level} of the {target} build"):
            start = time.perf_counter()
            (logits,) = run_project(project, level, inputs).values()
            seconds = time.perf_counter() - start
        total = totals[level]
        table.add_row(
            plan.levels[level].name,
            f"{board.levels[level].frequency_hz / 1e6:g}",
            f"{total['sparsity']:.3f}",
            f"{(total['value_bytes'] + total['index_bytes']) / 1024:.0f}",
            f"{(total['value_bytes'] + total['index_bytes']) / total['dense_bytes']:.3f}",
            f"{seconds:.2f}",
            f"{compiled.max_abs_diff[level]:.1e}",
            f"{float(np.max(np.abs(logits - dense))):.1e}",
        )
    stdout.print(table)
    stdout.print(
        f"C project: {project} (arena {compiled.arena_bytes} B = lower bound {compiled.arena_lower_bound} B; "
        f"weights {compiled.weight_bytes} B). Rebuild with `make -C {project}`."
    )
    stdout.print(
        "\n".join(summary(compiled.report)) + f"\n(details: {project / 'REPORT.md'})", soft_wrap=True
    )
