"""The examples in examples/, built and run as CI runs them."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from rt3c.stages.compile import compile_model
from rt3c.stages.encode import plan_model
from rt3c.stages.export import ExportResult

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def follower(bert_tiny_export: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/linux_cpufreq built around bert-tiny compiled for the host with the board's frequencies."""
    directory = tmp_path_factory.mktemp("cpufreq")
    plan = directory / "plan.json"
    plan_model(bert_tiny_export.onnx_path, plan, sparsities=[0.5, 0.7, 0.8], tile=(4, 4), patterns=8)
    project = directory / "project"
    compile_model(
        bert_tiny_export.onnx_path,
        project,
        plan_path=plan,
        board="rt3-default",
        prefix="bert_tiny",
        verify=False,
    )
    source = EXAMPLES / "linux_cpufreq"
    subprocess.run(
        ["make", "-s", "-f", str(source / "Makefile"), f"SRC={source}", f"PROJECT={project}"],
        cwd=directory, check=True,
    )  # fmt: skip
    return directory / "follow_cpufreq"


def test_linux_cpufreq_follower_against_a_fake_sysfs(follower: Path, tmp_path: Path) -> None:
    """The follower reads scaling_cur_freq from a sysfs tree of our own; every change it sees reaches
    bert_tiny_on_frequency, and the next inference runs at the level the rule gives."""
    cpufreq = tmp_path / "sys" / "devices" / "system" / "cpu" / "cpu0" / "cpufreq"
    cpufreq.mkdir(parents=True)
    current = cpufreq / "scaling_cur_freq"

    def write(text: str) -> None:  # atomically, as the follower may read at any moment
        (cpufreq / "next").write_text(text)
        os.replace(cpufreq / "next", current)

    write("1400000\n")
    with subprocess.Popen(
        [str(follower), str(current), "1000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        watchdog = threading.Timer(60, process.kill)
        watchdog.start()
        assert process.stdin is not None and process.stdout is not None

        def infer() -> str:
            process.stdin.write("\n")
            process.stdin.flush()
            return process.stdout.readline().strip()

        assert process.stdout.readline().strip() == "khz 1400000"
        assert infer() == "level 0"
        # 1.2 GHz is below level 0's 1.4 GHz and at least level 1's 1 GHz; the others are the levels' own.
        for khz, level in ((800_000, 2), (1_200_000, 1), (1_400_000, 0), (1_000_000, 1), (500_000, 2)):
            write(f"{khz}\n")
            assert process.stdout.readline().strip() == f"khz {khz}"
            assert infer() == f"level {level}"
        write("not a number\n")  # a bad read keeps the last level
        assert infer() == "level 2"
        process.stdin.close()
        assert process.wait() == 0
        watchdog.cancel()


def test_linux_cpufreq_follower_refuses_an_unreadable_path(follower: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(follower), str(tmp_path / "missing")], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2 and "cannot read a frequency from" in result.stderr
