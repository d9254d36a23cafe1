"""What the tests of `rt3c search` share: a board with binding deadlines, tiny budgets, the CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

from rt3c.cli import main

# Deadlines that bind: bert-tiny's dense model (~0.95M aarch64 instructions at 16 tokens) meets 2.2 ms at
# 1 GHz but not at 400 or 250 MHz, so the lower levels need sparse plans.
TIGHT_BOARD = """
name = "tight"
target = "aarch64"
battery_joules = 1000.0
latency_ms = 2.2
[power]
capacitance_nf = 1.0
[[levels]]
frequency_mhz = 1000
voltage = 1.2
[[levels]]
frequency_mhz = 400
voltage = 1.0
[[levels]]
frequency_mhz = 250
voltage = 0.9
"""
SEARCH_EPISODES = 8
# dense, lasso, finetune, warm, recovery (per candidate), joint: tiny, but every stage trains.
SEARCH_STEPS = "60,12,12,12,3,12"


def search_argv(board: Path, out: Path) -> list[str]:
    return [
        "search", "--model", "bert-tiny", "--data", "synthetic", "--board", str(board), "--out", str(out),
        "--steps", SEARCH_STEPS, "--episodes", str(SEARCH_EPISODES), "--validation-size", "120",
    ]  # fmt: skip


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code
