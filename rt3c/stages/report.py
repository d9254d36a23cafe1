"""`rt3c report DIR`: an HTML page with PNG plots of a search (`rt3c search --out DIR`).

Plots (matplotlib, Agg backend, so no display is needed): accuracy vs sparsity per level over every
evaluated candidate, latency per level against its deadline, energy per inference, the reward curves of
the controller and of random search, and the battery-life comparison of `rt3c simulate`. The page and
its images go to DIR/report/ (index.html); it reads only DIR/search.json and DIR/latency.json.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import EngFormatter, MaxNLocator

from rt3c.core.battery import Simulation
from rt3c.core.boards import Board
from rt3c.core.errors import UserError
from rt3c.core.files import atomic_directory
from rt3c.stages.simulate import RT3_CLAIMED_RATIO, read_json, searched_board, simulate_dir

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _save(figure: plt.Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def plot_accuracy(search: dict, path: Path) -> str:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    episodes = [e for log in search["methods"].values() for e in log if not e["cached"]]
    best = search["best"]
    for level in range(len(best["accuracy"])):
        color = COLORS[level % len(COLORS)]
        axes.scatter(
            [e["sparsity"][level] for e in episodes],
            [100 * e["accuracy"][level] for e in episodes],
            s=14,
            alpha=0.5,
            color=color,
            label=f"L{level} candidates, validation",
        )
        axes.scatter(
            best["sparsity"][level],
            100 * best["accuracy"][level],
            s=160,
            marker="*",
            color=color,
            edgecolor="black",
            label=f"L{level} best plan, validation",
        )
        axes.scatter(
            best["sparsity"][level],
            100 * best["test_accuracy"][level],
            s=70,
            marker="X",
            color=color,
            edgecolor="black",
            label=f"L{level} best plan, test (after training)",
        )
    dense = search["dense"]
    axes.axhline(100 * dense["validation_accuracy"], color="gray", linestyle="--", label="dense, validation")
    axes.axhline(100 * dense["test_accuracy"], color="gray", linestyle=":", label="dense, test")
    axes.set_xlabel("sparsity of the planned layers")
    axes.set_ylabel("accuracy (%)")
    axes.set_title("Validation accuracy of every evaluated candidate, and the best plan's test accuracy")
    axes.legend(fontsize=7, ncol=2)
    return _save(figure, path)


def plot_latency(latency: dict, dense_s: list[float], path: Path) -> str:
    levels = latency["levels"]
    x = np.arange(len(levels))
    figure, axes = plt.subplots(figsize=(8.5, 4.5))
    series = [
        ("dense model", "lightgray", [1e3 * s for s in dense_s]),
        ("best plan, predicted", "tab:cyan", [1e3 * s for s in latency["predicted_latency_s"]]),
        ("best plan, measured", "tab:blue", [1e3 * lv["latency_s"] for lv in levels]),
    ]
    for offset, (label, color, values) in zip((-0.27, 0.0, 0.27), series, strict=True):
        bars = axes.bar(x + offset, values, 0.27, color=color, label=label)
        axes.bar_label(bars, fmt="%.3g", fontsize=7)
    # Dense and sparse latencies differ by up to an order of magnitude: a log axis keeps both readable.
    axes.set_yscale("log")
    for index, level in enumerate(levels):
        axes.hlines(1e3 * level["deadline_s"], index - 0.45, index + 0.45, color="red", linewidth=2)
    axes.plot([], [], color="red", label="deadline")
    axes.set_xticks(x, [f"{lv['name']}\n{lv['frequency_hz'] / 1e6:g} MHz" for lv in levels])
    axes.set_ylabel("latency per inference (ms, log scale)")
    axes.set_title(f"Latency per level vs its constraint ({latency['source']}: {latency['unit']})")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the plot: deadlines on top
    return _save(figure, path)


def plot_energy(latency: dict, dense_s: list[float], board: Board, path: Path) -> str:
    levels = latency["levels"]
    x = np.arange(len(levels))
    powers = [board.power_watts(i) for i in range(len(levels))]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.bar(
        x - 0.2,
        [1e3 * p * s for p, s in zip(powers, dense_s, strict=True)],
        0.4,
        color="lightgray",
        label="dense model",
    )
    axes.bar(
        x + 0.2,
        [1e3 * p * lv["latency_s"] for p, lv in zip(powers, levels, strict=True)],
        0.4,
        color="tab:green",
        label="rt3c level",
    )
    axes.set_xticks(
        x,
        [
            f"{lv['name']}\n{lv['frequency_hz'] / 1e6:g} MHz, {p:.2f} W"
            for lv, p in zip(levels, powers, strict=True)
        ],
    )
    axes.set_ylabel("energy per inference (mJ)")
    axes.set_title("Energy per inference at each frequency level")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_rewards(search: dict, path: Path) -> str:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for color, (method, episodes) in zip(("tab:purple", "tab:gray"), search["methods"].items(), strict=False):
        rewards = [e["reward"] for e in episodes]
        axes.scatter(range(len(rewards)), rewards, s=10, alpha=0.5, color=color)
        axes.plot(np.maximum.accumulate(rewards), color=color, label=f"{method}: best so far")
        window = len(rewards) // 6
        if window >= 2:
            smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
            axes.plot(
                np.arange(window - 1, len(rewards)),
                smooth,
                color=color,
                linestyle=":",
                label=f"{method}: running mean of {window}",
            )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("episode")
    axes.set_ylabel("reward")
    axes.set_title("Search reward: REINFORCE controller vs random search (same budget)")
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_battery(sim: Simulation, board: Board, path: Path) -> str:
    figure, axes = plt.subplots(figsize=(7, 3.8))
    names = [s.name for s in sim.scenarios]
    values = [s.inferences_per_charge for s in sim.scenarios]
    bars = axes.barh(names, values, color=["lightgray", "darkgray", "tab:green", "tab:olive"])
    for bar, value in zip(bars, values, strict=True):
        axes.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {value / values[0]:.2f}x",
            va="center",
            fontsize=8,
        )
    axes.invert_yaxis()
    axes.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20M, not 2e7 written once at the axis's end
    axes.set_xlabel(f"inferences per battery charge ({board.battery_joules / 1e3:g} kJ)")
    axes.set_title(
        f"Battery life on {board.name}\ntime per level {' / '.join(f'{100 * p:g}%' for p in sim.trace)}"
    )
    axes.set_xlim(0, max(values) * 1.18)
    return _save(figure, path)


def _rows(cells: list[list[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)


def render_report(directory: Path, board_ref: str | None = None, trace: Path | None = None) -> Path:
    """Write DIR/report/index.html and its PNGs; returns the page's path."""
    directory = Path(directory)
    search = read_json(directory, "search.json", "rt3c search --out DIR")
    latency = read_json(directory, "latency.json", "rt3c search --out DIR")
    try:
        best = search["best"]
        methods = search["methods"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"{directory / 'search.json'}: malformed search log (missing {exc})") from None
    board = searched_board(directory, board_ref)
    sim = simulate_dir(directory, board_ref, trace)
    # Rendered into a staging folder that replaces DIR/report only when every file is written: a search log
    # or latency file with a field missing or of the wrong type is an error naming them, not half a report.
    out = directory / "report"
    with atomic_directory(out) as staging:
        try:
            _write_report(search, latency, best, methods, board, sim, staging)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise UserError(
                f"{directory}: search.json or latency.json is malformed ({type(exc).__name__}: {exc})"
            ) from None
    return out / "index.html"


def _write_report(
    search: dict, latency: dict, best: dict, methods: dict, board: Board, sim: Simulation, out: Path
) -> None:
    dense_units = latency["dense_units"] * latency["cycles_per_unit"]
    dense_s = [dense_units / lv["frequency_hz"] for lv in latency["levels"]]
    images = [
        (
            "Accuracy (validation and test) vs sparsity per level",
            plot_accuracy(search, out / "accuracy_vs_sparsity.png"),
        ),
        ("Latency per level vs its constraint", plot_latency(latency, dense_s, out / "latency.png")),
        ("Energy per inference", plot_energy(latency, dense_s, board, out / "energy.png")),
        ("Search reward", plot_rewards(search, out / "reward.png")),
        ("Battery life", plot_battery(sim, board, out / "battery.png")),
    ]
    level_rows = [
        [
            lv["name"],
            f"{lv['frequency_hz'] / 1e6:g}",
            f"{lv['sparsity']:.3f}",
            f"{100 * best['accuracy'][i]:.2f}",
            f"{100 * best['test_accuracy'][i]:.2f}",
            f"{1e3 * latency['predicted_latency_s'][i]:.2f}",
            f"{1e3 * lv['latency_s']:.2f}",
            f"{1e3 * lv['deadline_s']:g}",
            "yes" if lv["meets_deadline"] else "NO",
        ]
        for i, lv in enumerate(latency["levels"])
    ]
    sim_rows = [
        [
            s.name,
            f"{s.inferences_per_charge:,.0f}",
            f"{1e3 * s.joules_per_inference:.3f}",
            f"{s.deadline_misses_per_charge:,.0f}",
            f"{s.inferences_per_charge / sim.scenarios[0].inferences_per_charge:.2f}x",
        ]
        for s in sim.scenarios
    ]
    counts = {method: len(episodes) for method, episodes in methods.items()}
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>rt3c search report: {html.escape(search["model"])}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>rt3c search: {html.escape(search["model"])} on {html.escape(search["data"])}, board {html.escape(board.name)}</h1>
<p>Target {html.escape(latency["target"])}; latency source: {html.escape(latency["source"])} ({html.escape(latency["unit"])},
{latency["cycles_per_unit"]:g} cycles per unit). Episodes: {html.escape(", ".join(f"{m} {n}" for m, n in counts.items()))};
{search["distinct_candidates"]} distinct candidates evaluated. Best: {html.escape(best["method"])} episode {best["episode"]},
reward {best["reward"]:.3f} (objective {html.escape(str(search.get("objective", "accuracy")))}). Dense accuracy: validation {100 * search["dense"]["validation_accuracy"]:.2f}%,
test {100 * search["dense"]["test_accuracy"]:.2f}%.</p>
<h2>Best plan</h2>
<table><tr><th>level</th><th>MHz</th><th>sparsity</th><th>val. acc. %</th><th>test acc. %</th>
<th>predicted ms</th><th>measured ms</th><th>deadline ms</th><th>meets</th></tr>{_rows(level_rows)}</table>
<h2>Battery life</h2>
<table><tr><th>scenario</th><th>inferences / charge</th><th>mJ / inference</th><th>deadline misses / charge</th>
<th>vs dense at top</th></tr>{_rows(sim_rows)}</table>
<p>Battery ratio (rt3c levels following the trace / dense at the top frequency): <b>{sim.battery_ratio:.2f}x</b>
(RT3 claims more than {RT3_CLAIMED_RATIO:g}x).</p>
{"".join(f'<h2>{html.escape(title)}</h2><img src="{name}" alt="{html.escape(title)}">' for title, name in images)}
</body></html>
"""
    (out / "index.html").write_text(page)
