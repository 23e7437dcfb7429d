"""The ``sftrl`` group, its consoles and the helpers every subcommand uses."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
from rich.console import Console

from deploy.cli.errors import FAILURE, USAGE, CliError, as_cli_error
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


def fail(message: str, exit_code: int = USAGE) -> NoReturn:
    """Stop the command with ``error: message`` (exit 2: the user's input is wrong; 1: a failure)."""
    raise CliError(message, exit_code)


REGISTRY_TODO = "check that Redis answers at REDIS_URL, or unset REDIS_URL to use the local registry"


def unavailable(what: str, exc: BaseException, todo: str = REGISTRY_TODO) -> CliError:
    """A service the command needs cannot be used (exit 1): ``what unavailable: why``, then what to do."""
    why = as_cli_error(exc).message.splitlines()[0]
    return CliError(f"{what} unavailable: {why}\n{todo}", FAILURE)


class SftrlGroup(click.Group):
    """The ``sftrl`` group: the one place where what a subcommand raised becomes a one- or two-line
    message (:mod:`deploy.cli.errors`) and an exit code; with ``--debug`` the traceback instead.
    Click's own errors (usage, Ctrl-C's "Aborted!") are left to click."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        end = argv.index("--") if "--" in argv else len(argv)
        if "--debug" in argv[:end]:  # also after the subcommand, where users put it: a group option
            argv = ["--debug", *(a for i, a in enumerate(argv) if a != "--debug" or i >= end)]
        return super().main(argv, *rest, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, EOFError):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise as_cli_error(exc) from exc


@click.group(cls=SftrlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sftrl")
@click.option("--debug", is_flag=True, envvar="SFTRL_DEBUG",
              help="Show the full traceback of an error (also SFTRL_DEBUG=1).")  # fmt: skip
def main(debug: bool) -> None:
    """sftrl: SFT and RL post-training of foundation models on Ray."""


RAW_ARGS = {"ignore_unknown_options": True, "help_option_names": []}  # argparse parses (and helps)
