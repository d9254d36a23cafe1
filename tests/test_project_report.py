"""The project report of `rt3c compile` (report.json, REPORT.md, the printed summary) with a board: each
level's latency at its frequency on the board and its deadline. Built from constructed figures; the
compiled projects' reports are tested in test_compile.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rt3c.boards import load_board
from rt3c.codegen.targets import get_target
from rt3c.runtime_c.report import Flash, LevelReport, Ram, board_latencies, summary, write_report

INSTRUCTIONS = [3_000_000, 2_000_000, 1_500_000]


def test_latency_at_each_levels_frequency() -> None:
    board = load_board("cortex-m7")
    latencies, deadlines, why = board_latencies(INSTRUCTIONS, board, get_target("cortex-m7"))
    # 3 M, 2 M, 1.5 M instructions x 1.2 cycles at 480, 300, 200 MHz
    assert latencies == pytest.approx([7.5, 8.0, 9.0]) and why is None
    assert deadlines == pytest.approx([1e3 * lv.deadline_s for lv in board.levels])


@pytest.mark.parametrize(
    ("board", "target", "instructions", "reason"),
    [
        (
            "rt3-default",
            "cortex-m7",
            INSTRUCTIONS,
            "board rt3-default is for aarch64, this build for cortex-m7",
        ),
        ("cortex-m7", "cortex-m7", [None, None, None], "no instruction counts"),
    ],
)
def test_no_latency_without_the_boards_own_count(
    board: str, target: str, instructions: list[int | None], reason: str
) -> None:
    """A count for another CPU, or none (host time, --no-verify), gives no latency; the deadlines stay."""
    profile = load_board(board)
    latencies, deadlines, why = board_latencies(instructions, profile, get_target(target))
    assert latencies == [None, None, None] and why is not None and reason in why
    assert deadlines == pytest.approx([1e3 * lv.deadline_s for lv in profile.levels])


def test_no_board() -> None:
    assert board_latencies(INSTRUCTIONS, None, get_target("cortex-m7")) == ([None] * 3, [None] * 3, None)


def test_report_with_a_board(tmp_path: Path) -> None:
    board, target = load_board("cortex-m7"), get_target("cortex-m7")
    latencies, deadlines, why = board_latencies(INSTRUCTIONS, board, target)
    levels = [
        LevelReport(f"L{i}", lv.frequency_khz, 0.5 + 0.1 * i, 1e-6, None, n, latency, deadline)
        for i, (lv, n, latency, deadline) in enumerate(
            zip(board.levels, INSTRUCTIONS, latencies, deadlines, strict=True)
        )
    ]
    program = SimpleNamespace(name="bert-tiny", prefix="bert_tiny", weights_format="incbin")
    report = write_report(
        tmp_path,
        program,
        target,
        Flash(100, 200, 30, 2),
        Ram(64, 32, 8),
        levels,
        True,
        board,
        why,  # type: ignore[arg-type]
    )
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["board"] == {
        "name": "cortex-m7",
        "target": "cortex-m7",
        "cycles_per_instruction": 1.2,
        "no_latency": None,
    }
    assert report["levels"][0]["latency_ms"] == pytest.approx(7.5)
    deadline = f"{deadlines[0]:g}"
    assert summary(report)[1] == (
        f"L0: sparsity 0.500, 3,000,000 instructions per inference; 7.50 ms at 480 MHz on cortex-m7 (deadline {deadline} ms)"
    )
    text = (tmp_path / "REPORT.md").read_text()
    assert f"| 3,000,000 | 1.00x | 7.50 | {deadline} |" in text
    assert "at its frequency on board cortex-m7 (1.2 cycles per instruction)." in text
