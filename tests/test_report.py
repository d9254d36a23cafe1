"""`rt3c search` end to end on bert-tiny (tiny budget; the `searched` fixture in conftest.py), then
`rt3c simulate` and `rt3c report` on its output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image
from search_helpers import SEARCH_EPISODES, run_cli

from rt3c.battery import simulate
from rt3c.boards import load_board
from rt3c.plan import Plan


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
