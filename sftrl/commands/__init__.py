"""Implementations behind the ``sftrl`` subcommands (kept out of ``sftrl.cli`` so imports stay lazy)."""
