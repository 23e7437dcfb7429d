"""Files written whole, and files read within bounds.

A write goes to a hidden temporary file beside the target, is flushed to disk, renamed over the
target, and the folder's entry is flushed too: a crash leaves the old file or the new one, never half
of one. A read of a file someone else chose (an option's file, a record's, one on a shared volume)
is bounded and never blocks.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sftrl.errors import ConfigError


def fsync_path(path: str | Path) -> None:
    """Flush one file's data, or one folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to write ``path``'s new content into (``"w"`` text in UTF-8, or ``"wb"``); it replaces
    ``path`` durably when the block ends, and is removed if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name: two writers never share a temporary file; opened as any file is (umask applies)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


# Files named by options are read whole into memory: at most this many bytes, far above any real
# route file or benchmark, far below what would exhaust a replica.
MAX_FILE_BYTES = 64 * 1024 * 1024


def read_bounded(path: str | Path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else a ConfigError
    naming it as ``what``. A FIFO, a device (/dev/zero) or a folder is refused before it is opened and
    again after (a file swapped meanwhile), so nothing blocks or reads forever; at most ``limit + 1``
    bytes are read, so a file that grows after the check is refused too. OSErrors (a missing file)
    pass through for the caller to word."""
    _check_regular(os.stat(path), path, what, limit)  # opening some devices already does something
    # O_NONBLOCK: a FIFO swapped in after the check opens at once instead of waiting for a writer
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as fh:
        _check_regular(os.fstat(fh.fileno()), path, what, limit)
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{what} {path} is larger than {limit} bytes")
    return data


def _check_regular(st: os.stat_result, path: str | Path, what: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path} is not a regular file ({_kind(st.st_mode)}); name a file")
    if st.st_size > limit:
        raise ConfigError(f"{what} {path} is larger than {limit} bytes ({st.st_size} bytes)")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device or socket"
