"""The error every layer raises for a user's mistake: the command line shows its message, no traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and why."""
