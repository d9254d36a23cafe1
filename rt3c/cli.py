"""The `rt3c` command line. Each command is a thin shell over one stage's entry point.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the culprit), 1 internal failure.
Set RT3C_DEBUG=1 to see tracebacks of internal failures.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rt3c.errors import UserError, VerificationError
from rt3c.progress import stdout

app = typer.Typer(
    name="rt3c",
    help="Compile sparse Transformers (RT3 block + pattern pruning, DVFS levels) to C for ARM boards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Zoo name (see `rt3c models`), HF model directory, or module:factory."
    ),
]


@app.command("models")
def models_command() -> None:
    """List the built-in model zoo."""
    from rt3c.models import ZOO

    table = Table("name", "description")
    for entry in ZOO.values():
        table.add_row(entry.name, entry.description)
    stdout.print(table)


@app.command("boards")
def boards_command() -> None:
    """List the shipped board profiles (`--board` also takes a TOML file of your own)."""
    from rt3c.boards import load_board, shipped_boards

    table = Table("name", "target", "MHz @ V per level", "deadline ms", "battery kJ")
    for name in shipped_boards():
        board = load_board(name)
        table.add_row(
            name,
            board.target,
            ", ".join(f"{lv.frequency_hz / 1e6:g} @ {lv.voltage:g}" for lv in board.levels),
            ", ".join(f"{lv.deadline_s * 1e3:g}" for lv in board.levels),
            f"{board.battery_joules / 1e3:g}",
        )
    stdout.print(table)


@app.command("export")
def export_command(
    model: ModelOption,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output .onnx path; the sidecar is written as .json.")
    ],
    seq_len: Annotated[int, typer.Option("--seq-len", help="Sequence length baked into the graph.")] = 16,
    batch: Annotated[int, typer.Option("--batch", help="Batch size baked into the graph.")] = 1,
) -> None:
    """Export a model to ONNX and verify it against torch with onnxruntime."""
    from rt3c.export import export_model
    from rt3c.models import load_model

    result = export_model(load_model(model), out, seq_len=seq_len, batch=batch)
    typer.echo(f"{result.onnx_path}  (max |onnxruntime - torch| = {result.max_abs_diff:.2e})")
    typer.echo(f"{result.sidecar_path}")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo makes.")] = Path(
        "demo-out"
    ),
    model: ModelOption = "bert-tiny",
) -> None:
    """Run the whole chain on a default model and print what each stage produced."""
    from rt3c.pipeline import run_demo

    run_demo(model, out)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns (and exits with) the process exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return _exit(exc.exit_code)
    except typer.Abort:
        _error("interrupted")
        return _exit(130)
    except typer.TyperException as exc:  # usage errors (bad option, missing argument) exit 2
        exc.show()
        return _exit(exc.exit_code)
    except UserError as exc:
        _error(f"error: {exc}")
        return _exit(2)
    except (VerificationError, Exception) as exc:
        if os.environ.get("RT3C_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc}")
        return _exit(1)
    return _exit(0)


def _error(message: str) -> None:
    # Plain print, not rich: an error is one line however wide the terminal is.
    print(f"rt3c: {message}", file=sys.stderr)


def _exit(code: int) -> int:
    sys.exit(code)
