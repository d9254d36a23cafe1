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

from rt3c.core.errors import UserError, VerificationError
from rt3c.core.progress import stdout

app = typer.Typer(
    name="rt3c",
    help="Compile sparse Transformers (RT3 block + pattern pruning, DVFS levels) to C for ARM boards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: rich markup would eat text in brackets such as "[out, in]".
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelOption = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="Zoo name (see `rt3c models`), HF model directory, or module:factory."
    ),
]


def _print_version(value: bool) -> None:
    if value:
        from rt3c import __version__

        typer.echo(f"rt3c {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Compile sparse Transformers (RT3 block + pattern pruning, DVFS levels) to C for ARM boards."""


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
    from rt3c.export import export_model
    from rt3c.models import load_model

    result = export_model(load_model(model), out, seq_len=seq_len, batch=batch)
    typer.echo(f"{result.onnx_path}  (max |onnxruntime - torch| = {result.max_abs_diff:.2e})")
    typer.echo(f"{result.sidecar_path}")


LEVELS_HELP = "Number of DVFS levels (default: the number of --sparsity values; --board must have as many)."
SPARSITY_HELP = "Per level, densest first: the fraction of the planned layers' weights removed."
PATTERNS_HELP = "k, the number of patterns per pattern set."
BATCH_SIZE_HELP = "Examples per training step (export's --batch is the graph's batch dimension)."
PRUNE_STAGES = ("dense", "lasso", "finetune", "joint")
SEARCH_STAGES = ("dense", "lasso", "finetune", "warm", "recovery", "joint")


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r}: expected comma-separated numbers") from None


def _integers(text: str, option: str) -> list[int]:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise UserError(f"{option} {text!r}: expected comma-separated integers")
    return [int(part) for part in parts]


def parse_tile(text: str) -> tuple[int, int]:
    """`--tile ROWSxCOLS` as (rows, cols)."""
    rows, _, cols = text.lower().partition("x")
    if not (rows.isdigit() and cols.isdigit()) or int(rows) < 1 or int(cols) < 1:
        raise UserError(f"--tile {text!r}: expected ROWSxCOLS with positive integers, e.g. 4x4")
    return int(rows), int(cols)


@app.command("plan")
def plan_command(
    model: Annotated[Path, typer.Argument(help="Exported model.onnx (from `rt3c export`).")],
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
    from rt3c.encode import plan_model

    sparsities, frequencies = _levels(sparsity, levels, board)
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
    model: Annotated[Path, typer.Argument(help="Exported model.onnx.")],
    plan: Annotated[Path, typer.Option("--plan", "-p", help="Plan file (rt3c plan / rt3c prune).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Encoded model to write (.rt3.onnx).")],
    level: Annotated[
        int | None, typer.Option("--level", "-l", help="Keep only this level (default: all levels).")
    ] = None,
) -> None:
    """Encode planned layers as rt3c.SparseLinear (block index + pattern ids), verified with onnxruntime."""
    from rt3c.encode import encode_model

    result = encode_model(model, plan, out, level)
    diffs = ", ".join(f"{d:.1e}" for d in result.max_abs_diff)
    dense = f"; left dense (not in the plan): {', '.join(result.dense_layers)}" if result.dense_layers else ""
    typer.echo(f"{result.path}  (max |encoded - masked dense| per level: {diffs}{dense})")


@app.command("inspect")
def inspect_command(
    model: Annotated[Path, typer.Argument(help="Encoded model (.rt3.onnx).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Per layer and level: sparsity, value and index bytes, against dense and CSR (int32) storage."""
    import json

    from rt3c.inspect_model import inspect_model, print_report

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
) -> None:
    """Generate TVM kernels and the C runtime, build, and verify every level against onnxruntime.

    A model of several levels needs their frequencies (for NAME_on_frequency): from the plan, --board or
    --frequencies. The project holds REPORT.md: flash, RAM and, when verified, the cost of each level (with
    --board, counted under qemu for the board's target: its latency on the board and deadline)."""
    from rt3c.compile import compile_model
    from rt3c.runtime_c.report import summary

    result = compile_model(
        model,
        out,
        target_name=target,
        plan_path=plan,
        board=board,
        frequencies_khz=None if frequencies is None else _integers(frequencies, "--frequencies"),
        prefix=prefix,
        verify=verify,
        mcpu=mcpu,
        weights_format=weights_format,
    )
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
) -> None:
    """Run a compiled model: natively (host), under qemu-aarch64, or on qemu-system-arm (Cortex-M)."""
    import numpy as np

    from rt3c.run import run_project

    results = run_project(project, level, inputs)
    for name, array in results.items():
        typer.echo(f"{name} {list(array.shape)}: {np.array2string(array.reshape(-1)[:16], precision=6)}")
    if output is not None:
        np.save(output, next(iter(results.values())))


@app.command("prune")
def prune_command(
    model: ModelOption,
    data: Annotated[str, typer.Option("--data", help="rotten-tomatoes, hamlet or synthetic.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for stages, checkpoint, plan, eval.")],
    levels: Annotated[int | None, typer.Option("--levels", help=LEVELS_HELP)] = None,
    sparsity: Annotated[str, typer.Option("--sparsity", help=SPARSITY_HELP)] = "0.6,0.7,0.8",
    tile: Annotated[
        str, typer.Option("--tile", help="Tile (= BP block) ROWSxCOLS over the torch [out, in] weight.")
    ] = "4x4",
    patterns: Annotated[int, typer.Option("--patterns", help=PATTERNS_HELP)] = 8,
    block_ratio: Annotated[
        float | None, typer.Option("--block-ratio", help="Tiles BP removes (default: half of level 0's).")
    ] = None,
    layer_ratio: Annotated[
        list[str], typer.Option("--layer-ratio", help="REGEX=RATIO: BP ratio for matching layers.")
    ] = [],  # noqa: B006
    layers: Annotated[
        str | None, typer.Option("--layers", help="Regex of torch weight names (default: encoder linears).")
    ] = None,
    steps: Annotated[
        str, typer.Option("--steps", help=f"Training steps per stage: {','.join(PRUNE_STAGES)}.")
    ] = "300,150,100,120",
    lasso_strength: Annotated[float, typer.Option("--lasso-strength", help="Group lasso λ.")] = 1e-5,
    batch_size: Annotated[int, typer.Option("--batch-size", help=BATCH_SIZE_HELP)] = 32,
    distill: Annotated[
        float, typer.Option("--distill", help="Weight of distillation from the dense model, in [0, 1].")
    ] = 0.5,
    board: Annotated[
        str | None, typer.Option("--board", "-b", help="Board whose frequencies the levels get.")
    ] = None,
) -> None:
    """Prune with training: group lasso BP, PP per level, joint fine-tuning; resumable."""
    from rt3c.core.checks import real_number
    from rt3c.prune.pipeline import DEFAULT_LAYERS, PruneConfig, prune_model
    from rt3c.prune.report import print_evaluation

    sparsities, frequencies = _levels(sparsity, levels, board)
    dense_steps, lasso_steps, finetune_steps, joint_steps = _steps(steps, PRUNE_STAGES)
    if batch_size < 1:  # a larger batch than the data is one batch of all of it
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    real_number(lasso_strength, "--lasso-strength", low=0.0)  # NaN or inf would train to NaN weights
    ratios = {}
    for item in layer_ratio:
        regex, _, ratio = item.rpartition("=")
        ratios[regex] = _floats(ratio, "--layer-ratio")[0] if regex and ratio else None
        if ratios[regex] is None:
            raise UserError(f"--layer-ratio {item!r}: expected REGEX=RATIO")
    result = prune_model(
        PruneConfig(
            model=model,
            data=data,
            out=out,
            sparsities=sparsities,
            tile=parse_tile(tile),
            patterns=patterns,
            block_ratio=block_ratio,
            layer_ratios=ratios,
            layers=layers or DEFAULT_LAYERS,
            batch_size=batch_size,
            dense_steps=dense_steps,
            lasso_steps=lasso_steps,
            lasso_strength=lasso_strength,
            finetune_steps=finetune_steps,
            joint_steps=joint_steps,
            distill=distill,
            frequencies_khz=frequencies,
        )
    )
    print_evaluation(result.evaluation)
    typer.echo(f"{result.checkpoint}\n{result.plan_path}\n{result.eval_path}")


def _levels(sparsity: str, levels: int | None, board: str | None) -> tuple[list[float], list[int] | None]:
    """Per level the sparsity, and the frequencies of `--board` (None without one). The number of levels is
    that of `--sparsity`; `--levels` and the board's levels, when given, must agree with it."""
    sparsities = _floats(sparsity, "--sparsity")
    if levels is not None and levels != len(sparsities):
        raise UserError(f"--levels {levels} but --sparsity {sparsity} gives {len(sparsities)} values")
    if board is None:
        return sparsities, None
    from rt3c.core.boards import load_board

    frequencies = [level.frequency_khz for level in load_board(board).levels]
    if len(frequencies) != len(sparsities):
        raise UserError(
            f"--board {board} has {len(frequencies)} frequency levels but --sparsity {sparsity} "
            f"gives {len(sparsities)} values"
        )
    return sparsities, frequencies


def _steps(text: str, stages: tuple[str, ...]) -> list[int]:
    """`--steps`: one count per training stage, each at most the search's MAX_STEPS (prune's too)."""
    from rt3c.search.config import MAX_STEPS

    counts = _integers(text, "--steps")
    if len(counts) != len(stages):
        raise UserError(f"--steps {text!r}: expected {len(stages)} counts ({','.join(stages)})")
    if max(counts) > MAX_STEPS:
        raise UserError(f"--steps {text!r}: each count must be between 0 and {MAX_STEPS}")
    return counts


@app.command("search")
def search_command(
    model: ModelOption,
    data: Annotated[str, typer.Option("--data", help="rotten-tomatoes, hamlet or synthetic.")],
    board: Annotated[str, typer.Option("--board", "-b", help="Shipped board name or a TOML file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for stages, checkpoint, plan, eval.")],
    objective: Annotated[
        str,
        typer.Option(
            "--objective",
            help="accuracy: best accuracy with every deadline met; energy: least energy per inference "
            "along the board's trace, every deadline met and every level within --max-loss.",
        ),
    ] = "accuracy",
    max_loss: Annotated[
        str | None,
        typer.Option("--max-loss", help="energy: accuracy points each level may lose (default 1,1.5,2)."),
    ] = None,
    one_shot: Annotated[
        bool, typer.Option("--one-shot", help="No training after the dense baseline (quick exploration).")
    ] = False,
    steps: Annotated[
        str,
        typer.Option(
            "--steps",
            help=f"Training steps per stage: {','.join(SEARCH_STAGES)} (recovery: per candidate).",
        ),
    ] = "300,150,100,300,16,600",
    episodes: Annotated[int, typer.Option("--episodes", help="Per method (controller, random).")] = 24,
    controller_batch: Annotated[
        int, typer.Option("--controller-batch", help="Candidates per controller update.")
    ] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", help=BATCH_SIZE_HELP)] = 32,
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="Sequence length baked into the exported graph.")
    ] = 16,
    validation_size: Annotated[
        int, typer.Option("--validation-size", help="Validation examples per candidate.")
    ] = 400,
    block_ratio: Annotated[
        float | None,
        typer.Option("--block-ratio", help="Tiles BP removes (default: from the deadlines, at least 0.3)."),
    ] = None,
    densities: Annotated[
        str,
        typer.Option(
            "--densities",
            help="The choices, densest first, of the fraction of a kept tile a level keeps "
            "(the search picks each level's; its sparsity follows from it and the block ratio).",
        ),
    ] = "0.5,0.4375,0.375,0.3125,0.25",
    pattern_choices: Annotated[
        str,
        typer.Option(
            "--pattern-choices", help="The choices of k, the pattern-set size, the search picks per layer."
        ),
    ] = "2,4,8",
    distill: Annotated[
        float, typer.Option("--distill", help="Weight of distillation from the dense model, in [0, 1].")
    ] = 0.7,
    latency: Annotated[
        str | None, typer.Option("--latency", help="qemu (count) or host (time); default by target.")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="process, ray or serial.")] = "process",
    workers: Annotated[int | None, typer.Option("--workers", help="Parallel evaluations.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Search and train pattern sets per DVFS level for a board: every deadline met, best accuracy or least
    energy; resumable."""
    from rt3c.search.config import SearchConfig
    from rt3c.search.objective import parse_max_loss
    from rt3c.search.run import search_model

    dense_steps, lasso_steps, finetune_steps, warm_steps, recovery_steps, joint_steps = _steps(
        steps, SEARCH_STAGES
    )
    if max_loss is not None and objective != "energy":
        raise UserError("--max-loss: only with --objective energy")
    budgets = None
    if max_loss is not None:
        from rt3c.core.boards import load_board

        budgets = parse_max_loss(max_loss, len(load_board(board).levels))
    result = search_model(
        SearchConfig(
            model=model,
            data=data,
            board=board,
            out=out,
            objective=objective,
            max_loss=budgets,
            one_shot=one_shot,
            episodes=episodes,
            batch_size=controller_batch,
            batch=batch_size,
            seq_len=seq_len,
            validation_size=validation_size,
            block_ratio=block_ratio,
            densities=tuple(_floats(densities, "--densities")),
            pattern_counts=tuple(_integers(pattern_choices, "--pattern-choices")),
            distill=distill,
            latency=latency,
            backend=backend,
            workers=workers,
            dense_steps=dense_steps,
            lasso_steps=lasso_steps,
            finetune_steps=finetune_steps,
            warm_steps=warm_steps,
            recovery_steps=recovery_steps,
            joint_steps=joint_steps,
            seed=seed,
        )
    )
    evaluation = result.evaluation
    table = Table("level", "MHz", "sparsity", "test accuracy", "loss (points)", "latency ms", "deadline ms")
    for level in evaluation["levels"]:
        table.add_row(
            level["level"],
            f"{level['frequency_mhz']:g}",
            f"{level['sparsity']:.3f}",
            f"{level['test_accuracy']:.2f}",
            f"{level['loss_points']:+.2f}",
            f"{level['latency_ms']:.2f}",
            f"{level['deadline_ms']:g}{'' if level['meets_deadline'] else ' MISSED'}",
        )
    stdout.print(table)
    typer.echo(
        f"dense test accuracy {evaluation['dense']['test_accuracy']:.2f}; battery ratio "
        f"{evaluation['battery_ratio']:.2f}x; best: {result.best_method} episode {result.best.episode} "
        f"(objective {evaluation['objective']}); "
        f"{'meets' if result.meets_constraints else 'DOES NOT meet'} every level's deadline"
    )
    typer.echo(
        "\n".join(str(out / name) for name in ("plan.json", "eval.json", "latency.json", "search.json"))
    )


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

    from rt3c.simulate import print_simulation, simulate_dir

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
    from rt3c.report import render_report

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
    from rt3c.pipeline import run_demo

    run_demo(model, out, target)


STOP_SIGNALS = {"SIGINT": ("interrupted", 130), "SIGTERM": ("terminated", 143)}
"""The message and exit code (128 + the signal's number, as a shell reports it) of each signal that stops
a command."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns (and exits with) the process exit code.

    Ctrl-C exits 130 and SIGTERM 143, each with one line, wherever it lands: the handler raises
    KeyboardInterrupt, so staging folders and locks are removed on the way out as on any failure. typer
    turns a KeyboardInterrupt into an exit code that it returns (not raises) here, and one raised in a
    Python callback of TVM comes out of TVM as a bare RuntimeError, so the handler records which signal
    came.
    """
    import signal

    received: list[str] = []

    def on_signal(signal_number: int, frame: object) -> None:
        received.append(signal.Signals(signal_number).name)
        if len(received) == 1:  # a second signal would cut short the cleanup the first one started
            raise KeyboardInterrupt

    # Only over Python's defaults: a shell starts background jobs with Ctrl-C ignored, and so they stay.
    defaults = {"SIGINT": signal.default_int_handler, "SIGTERM": signal.SIG_DFL}
    previous = {name: signal.getsignal(getattr(signal, name)) for name in STOP_SIGNALS}
    taken = [name for name in STOP_SIGNALS if previous[name] is defaults[name]]
    for name in taken:
        signal.signal(getattr(signal, name), on_signal)
    message = None
    try:
        code = app(args=argv, standalone_mode=False)
    except typer.Abort:
        code = 130
    except typer.TyperException as exc:  # usage errors (bad option, missing argument) exit 2
        exc.show()
        code = exc.exit_code
    except UserError as exc:
        message, code = f"error: {exc}", 2
    except (VerificationError, Exception) as exc:
        if os.environ.get("RT3C_DEBUG") and not received:
            raise
        message, code = f"internal error: {type(exc).__name__}: {exc}", 1
    finally:
        for name in taken:
            signal.signal(getattr(signal, name), previous[name])
    if received or code == 130:
        message, code = STOP_SIGNALS[received[0] if received else "SIGINT"]
    if message is not None:
        _error(message)
    return _exit(code if isinstance(code, int) else 0)


def _error(message: str) -> None:
    # Plain print, not rich: an error is one line however wide the terminal is.
    print(f"rt3c: {message}", file=sys.stderr)


def _exit(code: int) -> int:
    sys.exit(code)
