"""The data folder of sftrl on this machine (models cache, the local registry's Redis files) and the
secrets kept in it."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def sftrl_home() -> Path:
    """``$SFTRL_HOME``, else ``~/.cache/sftrl``."""
    home = os.environ.get("SFTRL_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "sftrl"


def secret_file(path: Path) -> str:
    """The secret kept in ``path``, made on first use: 256 random bits, hex, mode 0600.

    The file is written under a private name and linked into place, so processes that race to make
    it agree on one secret and none reads a partial one.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        draft = Path(name)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()
