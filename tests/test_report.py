"""`rt3c search` end to end on bert-tiny (tiny budget; the `searched` fixture in conftest.py), then
`rt3c simulate` and `rt3c report` on its output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from PIL import Image
from search_helpers import SEARCH_EPISODES, run_cli

from rt3c.core.battery import simulate
from rt3c.core.boards import load_board
from rt3c.core.plan import Plan
from rt3c.stages import report


@pytest.mark.slow
def test_search_outputs(searched: tuple[Path, Path]) -> None:
    out, board_path = searched
    board = load_board(board_path)
    search = json.loads((out / "search.json").read_text())
    assert set(search["methods"]) == {"reinforce", "random"}
    assert all(len(episodes) == SEARCH_EPISODES for episodes in search["methods"].values())
    best = search["best"]
    assert best["feasible"] and best["reward"] > 0
    # The best plan's kernels were built and counted: they meet the deadlines the model predicted they meet.
    latency = json.loads((out / "latency.json").read_text())
    assert latency["source"] == "qemu" and latency["unit"] == "instructions"
    for level, entry in enumerate(latency["levels"]):
        assert entry["meets_deadline"]
        assert entry["predicted_units"] == pytest.approx(entry["units"], rel=0.1)
        assert entry["latency_s"] <= board.levels[level].deadline_s
    plan = Plan.load(out / "plan.json")
    assert [level.frequency_khz for level in plan.levels] == [lv.frequency_khz for lv in board.levels]
    assert plan.is_nested()
    assert [round(plan.sparsity(i), 6) for i in range(3)] == [round(s, 6) for s in best["sparsity"]]
    # `rt3c encode` accepts the plan with the exported model (and verifies every level).
    assert (
        run_cli(
            [
                "encode",
                str(out / "model.onnx"),
                "--plan",
                str(out / "plan.json"),
                "--out",
                str(out / "m.rt3.onnx"),
            ]
        )
        == 0
    )


@pytest.mark.slow
def test_simulate(searched: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, board_path = searched
    capsys.readouterr()
    assert run_cli(["simulate", str(out), "--board", str(board_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    latency = json.loads((out / "latency.json").read_text())
    board = load_board(board_path)
    expected = simulate(
        board, latency["dense_units"], [level["units"] for level in latency["levels"]], (0.5, 0.3, 0.2)
    )
    assert result["battery_ratio"] == pytest.approx(expected.battery_ratio)
    by_name = {s["name"]: s for s in result["scenarios"]}
    assert result["battery_ratio"] > 1.0
    # The dense model misses the deadlines of the slow levels; the switching rt3c levels miss none.
    assert by_name["dense, trace"]["deadline_misses_per_charge"] > 0
    assert by_name["rt3c levels, trace"]["deadline_misses_per_charge"] == 0
    assert run_cli(["simulate", str(out), "--board", str(board_path)]) == 0
    assert "battery ratio" in capsys.readouterr().out
    # Without --board, the board the search was made for (DIR/board.toml).
    assert run_cli(["simulate", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["battery_ratio"] == pytest.approx(result["battery_ratio"])


@pytest.mark.slow
def test_simulate_bad_input(
    searched: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, board_path = searched
    trace = tmp_path / "trace.txt"
    trace.write_text("1000 2\n400 x\n")
    cases = [
        (["simulate", str(tmp_path / "nothing"), "--board", str(board_path)], "nothing"),
        (["simulate", str(out), "--board", "cortex-m7"], "cortex-m7"),
        (["simulate", str(out), "--board", "no-such-board"], "no-such-board"),
        (["simulate", str(out), "--board", str(board_path), "--trace", str(trace)], f"{trace}:2"),
        (["report", str(tmp_path)], "search.json"),
    ]
    for argv, culprit in cases:
        capsys.readouterr()
        assert run_cli(argv) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and culprit in error, error


@pytest.mark.slow
def test_report_renders(searched: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = searched
    capsys.readouterr()
    assert run_cli(["report", str(out)]) == 0
    page = Path(capsys.readouterr().out.strip())
    assert page == out / "report" / "index.html"
    images = re.findall(r'<img src="([^"]+)"', page.read_text())
    assert len(images) == 5
    for name in images:
        with Image.open(page.parent / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
            image.verify()


@pytest.mark.slow
def test_report_of_a_tampered_search_log_is_an_error_and_writes_nothing(
    searched: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = searched
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("report", "stages", "checkpoint", "*.onnx"))
    log = json.loads((copy / "search.json").read_text())
    del next(iter(log["methods"].values()))[0]["reward"]
    (copy / "search.json").write_text(json.dumps(log))
    capsys.readouterr()
    assert run_cli(["report", str(copy)]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith(f"rt3c: error: {copy}: search.json or latency.json is malformed")
        and "reward" in error
    )
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name
        for p in out.iterdir()
        if p.name not in ("report", "stages", "checkpoint") and p.suffix != ".onnx"
    )


def _episode(reward: float) -> dict:
    return {"cached": False, "sparsity": [0.5, 0.7, 0.8], "accuracy": [0.8, 0.78, 0.75], "reward": reward}


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[plt.Figure]:
    """The figures the plot functions make, kept open instead of saved."""
    kept: list[plt.Figure] = []

    def keep(figure: plt.Figure, path: Path) -> str:
        kept.append(figure)
        return path.name

    monkeypatch.setattr(report, "_save", keep)
    yield kept
    for figure in kept:
        plt.close(figure)


def test_plots_are_readable(figures: list[plt.Figure], tmp_path: Path) -> None:
    """Latency on a log axis with its values written on the bars, whole episode numbers, the battery axis
    in inferences per the board's charge, and validation and test accuracy told apart."""
    board = load_board("rt3-default")
    levels = [
        {
            "name": f"L{i}",
            "frequency_hz": lv.frequency_hz,
            "latency_s": 0.002 / (i + 1),
            "deadline_s": lv.deadline_s,
        }
        for i, lv in enumerate(board.levels)
    ]
    latency = {"levels": levels, "predicted_latency_s": [0.002, 0.001, 0.0007], "source": "qemu", "unit": "x"}
    search = {
        "methods": {
            "reinforce": [_episode(0.1 * i) for i in range(5)],
            "random": [_episode(0.2) for _ in range(5)],
        },
        "best": {
            "sparsity": [0.5, 0.7, 0.8],
            "accuracy": [0.8, 0.78, 0.75],
            "test_accuracy": [0.79, 0.77, 0.74],
        },
        "dense": {"validation_accuracy": 0.82, "test_accuracy": 0.81},
    }
    report.plot_latency(latency, [0.02, 0.025, 0.05], tmp_path / "latency.png")
    report.plot_rewards(search, tmp_path / "reward.png")
    sim = simulate(board, 1e6, [5e5, 3e5, 2e5], (0.5, 0.3, 0.2))
    report.plot_battery(sim, board, tmp_path / "battery.png")
    report.plot_accuracy(search, tmp_path / "accuracy.png")
    latency_axes, reward_axes, battery_axes, accuracy_axes = (figure.axes[0] for figure in figures)

    assert latency_axes.get_yscale() == "log"
    labels = {text.get_text() for text in latency_axes.texts}
    assert {"20", "2", "0.667"} <= labels  # dense L0, measured L0 and L2, in ms

    reward_axes.figure.canvas.draw()
    ticks = [
        tick
        for tick in reward_axes.get_xticks()
        if reward_axes.get_xlim()[0] <= tick <= reward_axes.get_xlim()[1]
    ]
    assert ticks and all(float(tick).is_integer() for tick in ticks)

    assert f"{board.battery_joules / 1e3:g} kJ" in battery_axes.get_xlabel()
    battery_axes.figure.canvas.draw()
    assert any(label.get_text().endswith("M") for label in battery_axes.get_xticklabels())

    legend = [text.get_text() for text in accuracy_axes.get_legend().get_texts()]
    assert "L0 best plan, validation" in legend and "L0 best plan, test (after training)" in legend
    assert {"dense, validation", "dense, test"} <= set(legend)
    assert "Validation" in accuracy_axes.get_title() and "test" in accuracy_axes.get_title()
