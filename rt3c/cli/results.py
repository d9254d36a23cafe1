"""What a search made, read back (`rt3c simulate`, `rt3c report`), and `rt3c demo`, which makes all of it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rt3c.cli.app import ModelOption, app


@app.command("simulate")
def simulate_command(
    directory: Annotated[Path, typer.Argument(help="Output folder of `rt3c search`.")],
    board: Annotated[
        str | None,
        typer.Option("--board", "-b", help="Board (default: the one searched for, DIR/board.toml)."),
    ] = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="DVFS trace: 'frequency_mhz seconds' per line.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Inferences per battery charge: dense vs rt3c levels following a DVFS trace (default 50/30/20%)."""
    import json

    from rt3c.stages.simulate import print_simulation, simulate_dir

    sim = simulate_dir(directory, board, trace)
    if as_json:
        typer.echo(json.dumps(sim.to_json(), indent=1))
        return
    print_simulation(sim)


@app.command("report")
def report_command(
    directory: Annotated[Path, typer.Argument(help="Output folder of `rt3c search`.")],
    board: Annotated[
        str | None, typer.Option("--board", "-b", help="Board (default: the one searched for).")
    ] = None,
    trace: Annotated[Path | None, typer.Option("--trace", help="DVFS trace for the battery plot.")] = None,
) -> None:
    """An HTML page with PNG plots of a search: accuracy, latency, energy, rewards, battery life."""
    from rt3c.stages.report import render_report

    typer.echo(render_report(directory, board, trace))


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo makes.")] = Path(
        "demo-out"
    ),
    model: ModelOption = "bert-tiny",
    target: Annotated[
        str, typer.Option("--target", "-t", help="host, aarch64, cortex-m4 or cortex-m7.")
    ] = "aarch64",
) -> None:
    """Run the whole chain on a default model and print what each stage produced."""
    from rt3c.stages.pipeline import run_demo

    run_demo(model, out, target)
