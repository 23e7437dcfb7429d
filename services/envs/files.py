"""Reading files that options name (V-IRL routes, VisualQA datasets and their images): such a name
comes from a client or a record, so the read is bounded and never blocks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sftrl.config import ConfigError

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
