"""Child processes that leave nothing running behind them."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def run_process_group(
    command: list[str], cwd: Path, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `command` (output captured as text) in a process group of its own, and kill the whole group if
    anything interrupts the wait (Ctrl-C, SIGTERM, `timeout`).

    `subprocess.run` kills only its child: `make`'s compilers would go on writing object files into a
    staging folder that the interrupted rt3c is removing, and the folder would survive the removal."""
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
