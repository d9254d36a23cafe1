"""The commands of the compiler chain, one per stage: models, boards, export, plan, encode, inspect,
compile, run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rt3c.cli.app import ModelOption, app
from rt3c.cli.options import (
    LEVELS_HELP,
    PATTERNS_HELP,
    SHAPE_HELP,
    SPARSITY_HELP,
    VOCAB_HELP,
    WEIGHTS_HELP,
    integers,
    levels_and_frequencies,
    parse_shapes,
    parse_tile,
)
from rt3c.core.errors import SettingError, UserError
from rt3c.core.progress import stdout

FREQUENCY_OPTIONS = "--board BOARD or --frequencies KHZ,KHZ,... (kHz, one per level, densest first)"
"""How compile's levels get their frequencies, named in its error when a plan or model has none."""


@app.command("models")
def models_command() -> None:
    """List the built-in model zoo."""
    from rt3c.stages.models import ZOO

    table = Table("name", "description")
    for entry in ZOO.values():
        table.add_row(entry.name, entry.description)
    stdout.print(table)


@app.command("boards")
def boards_command() -> None:
    """List the shipped board profiles (`--board` also takes a TOML file of your own)."""
    from rt3c.core.boards import load_board, shipped_boards

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
    batch: Annotated[
        int,
        typer.Option("--batch", help="Batch dimension baked into the graph (not a training --batch-size)."),
    ] = 1,
) -> None:
    """Export a model to ONNX and verify it against torch with onnxruntime."""
    from rt3c.stages.export import export_model
    from rt3c.stages.models import load_model

    result = export_model(load_model(model), out, seq_len=seq_len, batch=batch)
    typer.echo(f"{result.onnx_path}  (max |onnxruntime - torch| = {result.max_abs_diff:.2e})")
    typer.echo(f"{result.sidecar_path}")


@app.command("plan")
def plan_command(
    model: Annotated[
        Path,
        typer.Argument(
            help="model.onnx from `rt3c export` (layers by torch name) or any other exporter (layers by "
            "weight initializer name)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan file to write (JSON).")],
    levels: Annotated[int | None, typer.Option("--levels", help=LEVELS_HELP)] = None,
    sparsity: Annotated[str, typer.Option("--sparsity", help=SPARSITY_HELP)] = "0.5,0.7,0.8",
    tile: Annotated[
        str, typer.Option("--tile", help="Tile ROWSxCOLS over the torch [out, in] weight.")
    ] = "4x4",
    patterns: Annotated[int, typer.Option("--patterns", help=PATTERNS_HELP)] = 8,
    block_ratio: Annotated[
        float | None,
        typer.Option(
            "--block-ratio", help="Fraction of tiles BP removes (default: half of level 0's sparsity)."
        ),
    ] = None,
    board: Annotated[
        str | None, typer.Option("--board", "-b", help="Board whose frequencies the levels get.")
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Regex of torch weight names (default: all but the output layer)."),
    ] = None,
) -> None:
    """One-shot plan: magnitude block pruning, then nested pattern sets per level (no training)."""
    from rt3c.stages.encode import plan_model

    sparsities, frequencies = levels_and_frequencies(sparsity, levels, board)
    plan = plan_model(
        model,
        out,
        sparsities=sparsities,
        tile=parse_tile(tile),
        patterns=patterns,
        block_ratio=block_ratio,
        frequencies_khz=frequencies,
        layers=layers,
    )
    achieved = ", ".join(f"{plan.sparsity(level):.3f}" for level in range(len(plan.levels)))
    typer.echo(f"{out}  ({len(plan.layers)} layers; sparsity per level: {achieved})")


@app.command("encode")
def encode_command(
    model: Annotated[Path, typer.Argument(help="Exported model.onnx (rt3c export or any ONNX exporter).")],
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Plan file (rt3c plan / rt3c prune).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoded model to write (.rt3.onnx).")],
    level: Annotated[
        int | None, typer.Option("--level", "-l", help="Keep only this level (default: all levels).")
    ] = None,
    shape: Annotated[list[str], typer.Option("--shape", help=SHAPE_HELP)] = [],  # noqa: B006
    weights: Annotated[str, typer.Option("--weights", help=WEIGHTS_HELP)] = "float32",
    vocab: Annotated[str | None, typer.Option("--vocab", help=VOCAB_HELP)] = None,
) -> None:
    """Encode planned layers as rt3c.SparseLinear (block index + pattern ids), verified with onnxruntime."""
    from rt3c.core.quantize import weight_type
    from rt3c.stages.encode import encode_model

    result = encode_model(model, plan, out, level, parse_shapes(shape), weight_type(weights), vocab)
    diffs = ", ".join(f"{d:.1e}" for d in result.max_abs_diff)
    dense = f"; left dense (not in the plan): {', '.join(result.dense_layers)}" if result.dense_layers else ""
    coverage = (
        "" if result.vocab_coverage is None else f"; {vocab} test tokens kept: {result.vocab_coverage:.2%}"
    )
    typer.echo(f"{result.path}  (max |encoded - masked dense| per level: {diffs}{dense}{coverage})")


@app.command("inspect")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="Encoded model (.rt3.onnx).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per layer and level: sparsity, value and index bytes, against dense and CSR (int32) storage."""
    import json

    from rt3c.stages.inspect_model import inspect_model, print_report

    report = inspect_model(model)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=1))
        return
    print_report(report)


@app.command("compile")
def compile_command(
    model: Annotated[
        Path, typer.Argument(help="Exported model.onnx with --plan, an encoded .rt3.onnx, or a dense model.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the C project (must not exist or be empty).")
    ],
    target: Annotated[
        str, typer.Option("--target", "-t", help="host, aarch64, cortex-m4 or cortex-m7.")
    ] = "host",
    plan: Annotated[
        Path | None,
        typer.Option(
            "--plan", "-p", help="The plan (of an encoded model: checked against it; gives the frequencies)."
        ),
    ] = None,
    board: Annotated[
        str | None, typer.Option("--board", "-b", help="Board whose frequencies the levels get.")
    ] = None,
    frequencies: Annotated[
        str | None,
        typer.Option("--frequencies", help="Per level, densest first, the lowest CPU frequency in kHz."),
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Start of every external C name (default: the model's name)."),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify", help="Run every level against onnxruntime (--no-verify: build only)."
        ),
    ] = True,
    mcpu: Annotated[
        str | None,
        typer.Option(
            "--mcpu", help="Cortex-M targets: build for this part (e.g. cortex-m33; needs --no-verify)."
        ),
    ] = None,
    weights_format: Annotated[
        str,
        typer.Option(
            "--weights-format",
            help="incbin (GNU assembler .incbin, fast) or c (const C arrays, any C99 toolchain).",
        ),
    ] = "incbin",
    shape: Annotated[list[str], typer.Option("--shape", help=SHAPE_HELP)] = [],  # noqa: B006
    weights: Annotated[
        str | None,
        typer.Option("--weights", help=WEIGHTS_HELP[:-1] + "; an encoded model has its own."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            help="Add a C WordPiece tokenizer (NAME_tokenize) over this vocabulary: a vocab.txt, a "
            "tokenizer.json, a Hugging Face model directory, or minilm-l6.",
        ),
    ] = None,
    vocab: Annotated[
        str | None, typer.Option("--vocab", help=VOCAB_HELP[:-1] + " (an exported model with --plan).")
    ] = None,
) -> None:
    """Generate TVM kernels and the C runtime, build, and verify every level against onnxruntime.

    A model of several levels needs their frequencies (for NAME_on_frequency): from the plan, --board or
    --frequencies. The project holds REPORT.md: flash, RAM and, when verified, the cost of each level (with
    --board, counted under qemu for the board's target: its latency on the board and deadline)."""
    from rt3c.core.quantize import weight_type
    from rt3c.runtime_c.report_text import summary
    from rt3c.stages.compile import compile_model
    from rt3c.stages.compile_inputs import MissingFrequenciesError

    if board is not None and frequencies is not None:
        raise UserError("--board and --frequencies: give the levels' frequencies with one of them")
    try:
        result = compile_model(
            model,
            out,
            target_name=target,
            plan_path=plan,
            board=board,
            frequencies_khz=None if frequencies is None else integers(frequencies, "--frequencies"),
            prefix=prefix,
            verify=verify,
            mcpu=mcpu,
            weights_format=weights_format,
            shapes=parse_shapes(shape),
            weights=None if weights is None else weight_type(weights),
            tokenizer=tokenizer,
            vocab=vocab,
        )
    except MissingFrequenciesError as exc:
        raise UserError(exc.render(FREQUENCY_OPTIONS)) from None
    except SettingError as exc:
        if exc.setting != "frequencies_khz":
            raise
        # compile takes them from --frequencies (prune and plan from --board, as OPTION_NAMES says)
        raise UserError(exc.render("--frequencies")) from None
    diffs = ", ".join(f"{d:.1e}" for d in result.max_abs_diff)
    checked = f"max |C - onnxruntime| per level: {diffs}" if verify else "not verified (--no-verify)"
    typer.echo(
        f"{result.out_dir}  (arena {result.arena_bytes} B, lower bound {result.arena_lower_bound} B; "
        f"weights {result.weight_bytes} B; {checked})"
    )
    typer.echo("\n".join(summary(result.report)) + f"\n(details: {result.out_dir / 'REPORT.md'})")


@app.command("run")
def run_command(
    project: Annotated[Path, typer.Argument(help="A C project made by `rt3c compile`.")],
    level: Annotated[int, typer.Option("--level", "-l", help="The level to run.")] = 0,
    inputs: Annotated[
        list[Path], typer.Option("--input", "-i", help="One .npy per model input, in order.")
    ] = [],  # noqa: B006
    output: Annotated[Path | None, typer.Option("--output", help="Save the first output as .npy.")] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help="Text instead of --input: tokenized by the project's C tokenizer."),
    ] = None,
) -> None:
    """Run a compiled model: natively (host), under qemu-aarch64, or on qemu-system-arm (Cortex-M)."""
    import numpy as np

    from rt3c.stages.run import run_project, run_text

    if text is not None and inputs:
        raise UserError("--text and --input: give the model's inputs one way")
    results = run_project(project, level, inputs) if text is None else run_text(project, level, text)
    for name, array in results.items():
        typer.echo(f"{name} {list(array.shape)}: {np.array2string(array.reshape(-1)[:16], precision=6)}")
    if output is not None:
        np.save(output, next(iter(results.values())))
