"""The data folder of sftrl on this machine: models cache, the local registry's Redis files."""

from __future__ import annotations

import os
from pathlib import Path


def sftrl_home() -> Path:
    """``$SFTRL_HOME``, else ``~/.cache/sftrl``."""
    home = os.environ.get("SFTRL_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "sftrl"
