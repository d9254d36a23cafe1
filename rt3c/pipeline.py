"""The whole chain, as the demo runs it: each stage's entry point called in order on files."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from rt3c.boards import load_board
from rt3c.encode import encode_model, plan_model
from rt3c.export import export_model
from rt3c.inspect_model import inspect_model
from rt3c.models import load_model
from rt3c.progress import stdout

DEMO_SPARSITIES = [0.5, 0.7, 0.8]
DEMO_BOARD = "rt3-default"


def run_demo(model_ref: str, out: Path) -> None:
    """export -> one-shot plan (3 levels on RT3's default board) -> encode, with a table per level."""
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_ref)
    exported = export_model(model, out / "model.onnx")
    board = load_board(DEMO_BOARD)
    plan = plan_model(
        exported.onnx_path,
        out / "plan.json",
        sparsities=DEMO_SPARSITIES,
        tile=(4, 4),
        patterns=8,
        frequencies_khz=[level.frequency_khz for level in board.levels],
    )
    encoded = encode_model(exported.onnx_path, out / "plan.json", out / "model.rt3.onnx")
    report = inspect_model(encoded.path)

    table = Table(
        "level",
        "CPU (MHz)",
        "sparsity",
        "value bytes",
        "index bytes",
        "vs dense",
        "max |encoded - masked|",
        title=f"rt3c demo: {model.name}, {len(plan.layers)} layers, board {board.name}",
    )
    for level, total in report.level_totals().items():
        table.add_row(
            plan.levels[level].name,
            f"{board.levels[level].frequency_hz / 1e6:g}",
            f"{total['sparsity']:.3f}",
            f"{int(total['value_bytes']):,}",
            f"{int(total['index_bytes']):,}",
            f"{(total['value_bytes'] + total['index_bytes']) / total['dense_bytes']:.3f}",
            f"{encoded.max_abs_diff[level]:.1e}",
        )
    stdout.print(table)
    stdout.print(
        f"export: {exported.onnx_path} (max |onnxruntime - torch| = {exported.max_abs_diff:.1e}); "
        f"plan: {out / 'plan.json'}; encoded: {encoded.path}"
    )
