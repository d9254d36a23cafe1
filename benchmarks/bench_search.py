"""The AutoML loop's goals, measured: `rt3c search` from (model, data, board) to a trained, compiled,
multi-level model, then a table of what it reached against the issue's goals.

    .venv/bin/python benchmarks/bench_search.py --out DIR [--objective energy] [-- extra rt3c search options]

Defaults: minilm-l6 on rotten-tomatoes for rt3-default, `--objective energy` with the default loss budgets.
Reads DIR/eval.json, latency.json and search.json after the run (or of an earlier run with --report-only)
and prints: per level the sparsity, test accuracy and loss against dense, measured latency against the
deadline, and executed instructions split into SparseLinear kernels and everything else; the battery
ratio; REINFORCE against random search at the same budget; the wall time of the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

GOALS = {"densest_loss": 1.0, "sparsest_loss": 2.0, "battery_ratio": 4.0, "minutes": 60.0}


def run_search(args: argparse.Namespace, extra: list[str]) -> float:
    command = [
        str(Path(sys.executable).with_name("rt3c")),
        "search",
        "--model", args.model,
        "--data", args.data,
        "--board", args.board,
        "--objective", args.objective,
        "--out", str(args.out),
        *extra,
    ]  # fmt: skip
    print("$", " ".join(command), flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True)
    return (time.monotonic() - started) / 60


def dense_checkpoints() -> set[Path]:
    """The cached dense baselines: a run that trains its own adds one (the time goal counts it cached)."""
    from rt3c.core.cache import cache_dir

    return set(cache_dir("dense").glob("*.pt"))


def report(out: Path, minutes: float | None, dense_was_cached: bool = True) -> None:
    evaluation = json.loads((out / "eval.json").read_text())
    latency = json.loads((out / "latency.json").read_text())
    search = json.loads((out / "search.json").read_text())
    dense_units = latency["dense_units"]
    unit = "M instr" if latency["unit"] == "instructions" else "ms"
    scale = 1e-6 if latency["unit"] == "instructions" else 1e3
    print(
        f"\nobjective {evaluation['objective']}; dense test accuracy {evaluation['dense']['test_accuracy']:.2f}"
    )
    print(f"dense model: {scale * dense_units:.2f} {unit} per inference")
    header = (
        "| level | MHz | sparsity | test acc | vs dense (points) | latency ms | deadline ms | meets |"
        f" {unit} total | sparse linear | other | vs dense |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row, level in zip(evaluation["levels"], latency["levels"], strict=True):
        print(
            f"| {row['level']} | {row['frequency_mhz']:g} | {row['sparsity']:.3f} | {row['test_accuracy']:.2f} | "
            f"{-row['loss_points']:+.2f} | {row['latency_ms']:.2f} | {row['deadline_ms']:g} | "
            f"{'yes' if row['meets_deadline'] else 'NO'} | {scale * level['units']:.2f} | "
            f"{scale * level['sparse_units']:.2f} | {scale * level['other_units']:.2f} | "
            f"{level['units'] / dense_units:.3f} |"
        )
    losses = [row["loss_points"] for row in evaluation["levels"]]
    print(f"\nbattery ratio (trace {evaluation['trace']}): {evaluation['battery_ratio']:.2f}x")
    reference = search.get("loss_reference")
    if reference:
        accuracy = "/".join(f"{100 * a:.2f}" for a in reference["accuracy"])
        dense = 100 * search["dense"]["validation_accuracy"]
        print(
            f"loss budgets measured against: {reference['kind']}, validation {accuracy} (dense {dense:.2f})"
        )
    print("\n| method | best reward | mean reward, last quarter of episodes |\n|---|---|---|")
    for method, summary in search["comparison"].items():
        print(f"| {method} | {summary['best_reward']:.3f} | {summary['last_quarter_mean_reward']:.3f} |")
    print(
        f"best: {search['best']['method']} episode {search['best']['episode']}; block ratio "
        f"{search['space']['block_ratio']}; {search['distinct_candidates']} distinct candidates"
    )
    print("\n| goal | target | reached | met |\n|---|---|---|---|")
    rows = [
        ("every deadline met (measured)", "all", all(r["meets_deadline"] for r in evaluation["levels"])),
        ("densest level loss", f"<= {GOALS['densest_loss']}", losses[0] <= GOALS["densest_loss"]),
        ("sparsest level loss", f"<= {GOALS['sparsest_loss']}", losses[-1] <= GOALS["sparsest_loss"]),
        (
            "battery ratio",
            f">= {GOALS['battery_ratio']}",
            evaluation["battery_ratio"] >= GOALS["battery_ratio"],
        ),
    ]
    reached = [
        "yes" if rows[0][2] else "no",
        f"{losses[0]:.2f}",
        f"{losses[-1]:.2f}",
        f"{evaluation['battery_ratio']:.2f}x",
    ]
    if minutes is not None:
        label = "wall time (dense cached)" if dense_was_cached else "wall time (dense trained in the run)"
        rows.append((label, f"<= {GOALS['minutes']:g} min", minutes <= GOALS["minutes"]))
        reached.append(f"{minutes:.1f} min")
    for (goal, target, met), value in zip(rows, reached, strict=True):
        print(f"| {goal} | {target} | {value} | {'yes' if met else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data", default="rotten-tomatoes")
    parser.add_argument("--board", default="rt3-default")
    parser.add_argument("--objective", default="energy")
    parser.add_argument("--report-only", action="store_true", help="Only print the tables of an earlier run.")
    args, extra = parser.parse_known_args()
    cached_before = dense_checkpoints()
    minutes = None if args.report_only else run_search(args, [a for a in extra if a != "--"])
    report(args.out, minutes, dense_was_cached=dense_checkpoints() <= cached_before)


if __name__ == "__main__":
    main()
