"""The `rt3c` command line. Each command is a thin shell over one stage's entry point.

Exit codes: 0 success, 2 bad usage or bad input (one line naming the culprit), 1 internal failure.
Set RT3C_DEBUG=1 to see tracebacks of internal failures.
"""

from rt3c.cli.app import app, main

# Each command module registers its commands on `app` when imported, in the order `rt3c --help` lists them.
# isort: off
from rt3c.cli import stages, training, results  # noqa: F401
# isort: on

__all__ = ["app", "main"]
