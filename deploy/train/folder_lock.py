"""One writer per run folder: a second driver of a folder is refused while the first one lives.

Checkpoint temporaries, ``metrics.jsonl`` and the resolved config all assume a single writer. The
lock is an advisory ``flock`` on ``<output_dir>/.<run_name>.lock``, beside the folder rather than in
it (``--restart`` moves the folder aside and must not move the lock with it). The kernel drops the
lock when its process dies, however it dies, so a crashed writer never leaves the folder locked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path

from deploy.train.resume import ResumeRefused

MAX_HOLDER_BYTES = 256  # who holds the lock, as the holder wrote it: read bounded, shown, never trusted


class RunFolderBusy(ResumeRefused):
    """Another process is writing this run folder now (a user error: exit 2, no traceback)."""


class RunFolderLock:
    """Held from construction until :meth:`release` (or the process's end)."""

    def __init__(self, run_dir: Path):
        self._fd: int | None = None
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise ResumeRefused(f"{self.path} is a link, not a run's lock file: remove it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, MAX_HOLDER_BYTES, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RunFolderBusy(
                f"{run_dir} is being written by another run now ({holder or 'holder unknown'}); "
                "wait for it to end, stop it, or use another run_name / output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let another writer have the folder (the lock file stays: removing it would race a taker)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self) -> None:
        self.release()
