"""The evaluation table of `rt3c prune`: one row per level (pruned and one-shot), then sparsity per layer."""

from __future__ import annotations

from rich.table import Table

from rt3c.core.progress import stdout


def level_table(title: str, evaluation: dict, rows: list[dict]) -> Table:
    language_model = evaluation["metric"] == "perplexity"
    dense = evaluation["dense"]
    table = Table(title=title)
    for column in ("level", "sparsity", "accuracy", "Δ accuracy (points)"):
        table.add_column(column, justify="right")
    if language_model:
        table.add_column("perplexity", justify="right")
        table.add_column("Δ perplexity", justify="right")
    table.add_row(
        "dense",
        "0.000",
        f"{100 * dense['accuracy']:.2f}",
        "",
        *([f"{dense['perplexity']:.2f}", ""] if language_model else []),
    )
    for row in rows:
        table.add_row(
            row["level"],
            f"{row['sparsity']:.3f}",
            f"{100 * row['accuracy']:.2f}",
            f"{100 * row['accuracy_change']:+.2f}",
            *([f"{row['perplexity']:.2f}", f"{row['perplexity_change']:+.2f}"] if language_model else []),
        )
    return table


def print_evaluation(evaluation: dict) -> None:
    stdout.print(
        level_table(
            "pruned (group lasso BP + PP + joint fine-tune), test split", evaluation, evaluation["levels"]
        )
    )
    stdout.print(
        level_table("one-shot (magnitudes, no retraining), test split", evaluation, evaluation["one_shot"])
    )
    layers = Table(title="sparsity per layer")
    layers.add_column("layer")
    for row in evaluation["levels"]:
        layers.add_column(row["level"], justify="right")
    for name in evaluation["levels"][0]["layer_sparsity"]:
        layers.add_row(name, *(f"{row['layer_sparsity'][name]:.3f}" for row in evaluation["levels"]))
    stdout.print(layers)
