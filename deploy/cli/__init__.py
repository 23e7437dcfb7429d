"""The ``sftrl`` command line. Subcommands stay thin: they parse, validate and call a service
(``deploy.commands``), importing it only when they run so ``sftrl --help`` stays fast."""

from __future__ import annotations

from deploy.cli import env_data, registry, training  # noqa: F401  (each registers its subcommands)
from deploy.cli.base import main, parse_env_options

__all__ = ["main", "parse_env_options"]
