"""The commands that train: `rt3c prune` and `rt3c search` (resumable, their stages cached in OUT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rt3c.cli.app import ModelOption, app
from rt3c.cli.options import (
    BATCH_SIZE_HELP,
    HIDDEN_DISTILL_HELP,
    LEVELS_HELP,
    PATTERNS_HELP,
    PRECISION_HELP,
    SPARSITY_HELP,
    floats,
    integers,
    levels_and_frequencies,
    parse_tile,
    stage_steps,
)
from rt3c.core.errors import UserError
from rt3c.core.progress import stdout

PRUNE_STAGES = ("dense", "lasso", "finetune", "joint")
SEARCH_STAGES = ("dense", "lasso", "finetune", "warm", "recovery", "joint")


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
    hidden_distill: Annotated[float, typer.Option("--hidden-distill", help=HIDDEN_DISTILL_HELP)] = 0.0,
    board: Annotated[
        str | None, typer.Option("--board", "-b", help="Board whose frequencies the levels get.")
    ] = None,
    # float32 by default, unlike search: prune's measured accuracies (docs/PRUNING.md) are float32's.
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "float32",
) -> None:
    """Prune with training: group lasso BP, PP per level, joint fine-tuning; resumable."""
    from rt3c.core.checks import real_number
    from rt3c.stages.prune.layers import DEFAULT_LAYERS
    from rt3c.stages.prune.pipeline import PruneConfig, prune_model
    from rt3c.stages.prune.report import print_evaluation

    sparsities, frequencies = levels_and_frequencies(sparsity, levels, board)
    dense_steps, lasso_steps, finetune_steps, joint_steps = stage_steps(steps, PRUNE_STAGES)
    if batch_size < 1:  # a larger batch than the data is one batch of all of it
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    real_number(lasso_strength, "--lasso-strength", low=0.0)  # NaN or inf would train to NaN weights
    ratios = {}
    for item in layer_ratio:
        regex, _, ratio = item.rpartition("=")
        ratios[regex] = floats(ratio, "--layer-ratio")[0] if regex and ratio else None
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
            hidden_distill=hidden_distill,
            frequencies_khz=frequencies,
            precision=precision,
        )
    )
    print_evaluation(result.evaluation)
    typer.echo(f"{result.checkpoint}\n{result.plan_path}\n{result.eval_path}")


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
    loss_reference: Annotated[
        str | None,
        typer.Option(
            "--loss-reference",
            help="energy: what --max-loss is measured against: densest (the space's densest candidate "
            "after the same short recovery as every candidate; the default) or dense (the dense model).",
        ),
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
    ] = "300,150,100,300,16,1200",
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
    hidden_distill: Annotated[float, typer.Option("--hidden-distill", help=HIDDEN_DISTILL_HELP)] = 0.0,
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    latency: Annotated[
        str | None, typer.Option("--latency", help="qemu (count) or host (time); default by target.")
    ] = None,
    backend: Annotated[str, typer.Option("--backend", help="process, ray or serial.")] = "process",
    workers: Annotated[int | None, typer.Option("--workers", help="Parallel evaluations.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Search and train pattern sets per DVFS level for a board: every deadline met, best accuracy or least
    energy; resumable."""
    from rt3c.stages.search.config import LOSS_REFERENCES, SearchConfig
    from rt3c.stages.search.objective import parse_max_loss
    from rt3c.stages.search.run import search_model

    dense_steps, lasso_steps, finetune_steps, warm_steps, recovery_steps, joint_steps = stage_steps(
        steps, SEARCH_STAGES
    )
    if max_loss is not None and objective != "energy":
        raise UserError("--max-loss: only with --objective energy")
    if loss_reference is not None and objective != "energy":
        raise UserError("--loss-reference: only with --objective energy")
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
            loss_reference=loss_reference or LOSS_REFERENCES[0],
            one_shot=one_shot,
            episodes=episodes,
            controller_batch=controller_batch,
            batch_size=batch_size,
            seq_len=seq_len,
            validation_size=validation_size,
            block_ratio=block_ratio,
            densities=tuple(floats(densities, "--densities")),
            pattern_counts=tuple(integers(pattern_choices, "--pattern-choices")),
            distill=distill,
            hidden_distill=hidden_distill,
            precision=precision,
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
