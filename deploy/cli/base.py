"""The ``sftrl`` group, its consoles and the helpers every subcommand uses."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console

from sftrl import __version__
from sftrl.config import apply_overrides

console = Console()
err_console = Console(stderr=True)

EXTRA_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True}


def parse_env_options(args: list[str]) -> dict[str, Any]:
    """Turn ``--face-cards as_11_12_13 --target 24`` (or ``face_cards=as_11_12_13``) into a dict.

    Values are read as YAML scalars, so numbers become numbers; the environment validates names.
    """
    items: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            if not sep:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise click.UsageError(f"environment option {arg} needs a value")
                value = args[i + 1]
                i += 1
            items.append(f"{key.replace('-', '_')}={value}")
        elif "=" in arg:
            items.append(arg)
        else:
            raise click.UsageError(f"unexpected argument {arg!r}; environment options look like --mode image")
        i += 1
    return apply_overrides({}, items)


def fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftrl")
def main() -> None:
    """sftrl: SFT and RL post-training of foundation models on Ray."""


RAW_ARGS = {"ignore_unknown_options": True, "help_option_names": []}  # argparse parses (and helps)
