"""Writing outputs so that a failure never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rt3c.core.errors import SettingError, UserError


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UserError(f"{path}: is a directory")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise UserError(f"{path}: directory {directory} does not exist or is not writable")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a staging folder next to `path`; on success it replaces `path` (and whatever was there), on
    failure it is removed: `path` is written whole or not at all."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}."))
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold a lock on `path` for the block, so that a second rt3c writing the same `path` is refused
    rather than mixing its files with the first one's. The lock is an flock on `.NAME.lock` next to `path`
    (the staging folders live there too); the kernel drops it when the process dies, however it dies, and
    the file is removed on release. `path` is always a command's output folder, hence the `out` setting."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise SettingError("out", f"directory {directory} does not exist or is not writable", path)
    lock = directory / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SettingError(
                "out",
                f"another rt3c process is writing it (it holds {lock}); wait for it to end or choose another output folder",
                path,
            ) from None
        # The previous holder removes the file on release: if it did so after we opened it, our lock is
        # on a file no one else will open, so lock the one now at that path instead.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
