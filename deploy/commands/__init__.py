"""Implementations behind the ``sftrl`` subcommands (kept out of ``deploy.cli`` so imports stay lazy)."""
