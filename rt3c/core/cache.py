"""Where rt3c keeps what it can rebuild: compiled kernels, latency measurements, dense checkpoints.

One root, `$RT3C_CACHE_DIR`, else `$XDG_CACHE_HOME/rt3c`, else `~/.cache/rt3c`, with one folder per kind.
Everything in it is keyed by what it was made from, so deleting it only costs time.

Entries written with `write_entry` carry a record of their size and SHA-256 (`ENTRY.sha256`), and
`read_entry` checks it: a truncated or altered entry (a full disk, a killed copy, a hand edit) is rebuilt
instead of being used, which once made every later compile of that model fail until the cache was deleted
by hand.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The folder of one kind of cached artifact (`kernels`, `latency`, `dense`)."""
    if "RT3C_CACHE_DIR" in os.environ:
        root = Path(os.environ["RT3C_CACHE_DIR"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rt3c"
    return root / kind


def _record_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".sha256")


def _record(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def read_entry(entry: Path) -> bytes | None:
    """The bytes of a cache entry, or None when there is none or it is damaged (it does not match the size
    and digest recorded when it was written; it is then removed, with a warning, to be rebuilt)."""
    record = _record_path(entry)
    if not entry.is_file():
        return None
    try:
        data = entry.read_bytes()
        recorded = record.read_text() if record.is_file() else "none"
    except (OSError, UnicodeDecodeError) as exc:
        data, recorded = b"", f"unreadable ({exc})"
    if recorded == _record(data):
        return data
    if recorded == "none":
        problem = "has no size and digest record (an older rt3c wrote it)"
    else:
        problem = f"is damaged ({len(data)} bytes, record: {recorded.strip()[:80]!r})"
    print(f"rt3c: warning: cache entry {entry} {problem}; rebuilding it", file=sys.stderr)
    entry.unlink(missing_ok=True)
    record.unlink(missing_ok=True)
    return None


def write_entry(entry: Path, data: bytes) -> None:
    """Store `data` at `entry` with its record, each replaced atomically: concurrent writers of one key at
    worst compute twice, and a reader never sees half a file pass its check."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((entry, data), (_record_path(entry), _record(data).encode())):
        with tempfile.NamedTemporaryFile(dir=entry.parent, prefix=f".{path.name}.", delete=False) as staged:
            try:
                staged.write(content)
                staged.close()
                os.replace(staged.name, path)
            except BaseException:
                Path(staged.name).unlink(missing_ok=True)
                raise
