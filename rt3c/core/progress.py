"""Progress for long steps, on stderr so that stdout stays clean for tables and JSON."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False)
# Results (tables, listings) go to stdout.
stdout = Console(highlight=False)


@contextlib.contextmanager
def step(message: str) -> Iterator[None]:
    """Show a spinner while the block runs, then one line with the time it took."""
    start = time.perf_counter()
    with console.status(message):
        yield
    console.print(f"[green]✓[/green] {message} ({time.perf_counter() - start:.1f} s)")


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what native libraries (TVM's C++ logging) write to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet() -> Iterator[io.StringIO]:
    """Swallow what chatty libraries print to stdout/stderr; the captured text is there for error messages."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer
