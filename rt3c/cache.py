"""Where rt3c keeps what it can rebuild: compiled kernels, latency measurements, dense checkpoints.

One root, `$RT3C_CACHE_DIR`, else `$XDG_CACHE_HOME/rt3c`, else `~/.cache/rt3c`, with one folder per kind.
Everything in it is keyed by what it was made from, so deleting it only costs time.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached artifact (`kernels`, `latency`, `dense`)."""
    if "RT3C_CACHE_DIR" in os.environ:
        root = Path(os.environ["RT3C_CACHE_DIR"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rt3c"
    return root / kind
