"""Where a result came from: the commit of the code and the kind of CPU that made it."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path
from typing import Any

from sftrl.hardware import cpu_kind, cpu_model


@cache
def git_commit() -> str | None:
    """The short commit of the checkout this code runs from; None when it is not a git checkout
    (an installed wheel) or git is missing."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """``{"commit": ..., "cpu": <model name>, "cpu_kind": <cpu_kind()>}`` for records of results."""
    return {"commit": git_commit(), "cpu": cpu_model(), "cpu_kind": cpu_kind()}
