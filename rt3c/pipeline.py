"""The whole chain, as the demo runs it: each stage's entry point called in order on files."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from rt3c.export import export_model
from rt3c.models import load_model
from rt3c.progress import stdout


def run_demo(model_ref: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_ref)
    exported = export_model(model, out / "model.onnx")
    table = Table("stage", "artifact", "check", title=f"rt3c demo: {model.name}")
    table.add_row("export", str(exported.onnx_path), f"max |ORT - torch| = {exported.max_abs_diff:.2e}")
    stdout.print(table)
