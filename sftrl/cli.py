"""The ``sftrl`` command line. Subcommands stay thin: they parse, validate and call a service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from sftrl import __version__
from sftrl.config import ConfigError, apply_overrides, build

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


# -- environments ------------------------------------------------------------------------------


@main.group("env")
def env_group() -> None:
    """Inspect and play the environments."""


@env_group.command("list")
def env_list() -> None:
    """List the environments and their options."""
    from rich.table import Table

    from sftrl.commands.env_list import describe_envs

    for env_id, fields in describe_envs().items():
        table = Table(title=env_id, title_justify="left", show_lines=False)
        for col in ("option", "type", "default"):
            table.add_column(col)
        for name, type_text, default in fields:
            table.add_row(name, type_text, default)
        console.print(table)


@env_group.command("play", context_settings=EXTRA_ARGS)
@click.argument("env_id")
@click.option("--seed", type=int, default=None, help="Seed of the episode (random if omitted).")
@click.option(
    "--image-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to save the picture in image modes (default: ./sftrl-<env>.png).",
)
@click.pass_context
def env_play(ctx: click.Context, env_id: str, seed: int | None, image_out: Path | None) -> None:
    """Play an episode in the terminal: type answers; ':hint' shows the expert's, ':quit' leaves.

    Environment options follow as --name value, e.g. `sftrl env play sftrl/GeneralPoints-v0 --mode image`.
    """
    from sftrl.commands.env_play import play_episode

    try:
        options = parse_env_options(ctx.args)
        play_episode(env_id, options, seed, image_out, console)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


# -- data --------------------------------------------------------------------------------------


@main.group("data")
def data_group() -> None:
    """Build datasets."""


@data_group.command("sft", context_settings=EXTRA_ARGS)
@click.option("--env", "env_id", required=True, help="Environment id, e.g. sftrl/GeneralPoints-v0.")
@click.option("--episodes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file: .json gets LLaVA conversations, .jsonl chat messages; the other "
    "format is written beside it with the other suffix.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--revision-fraction",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Share of episodes whose first attempt is wrong and then revised after feedback.",
)
@click.option(
    "--format",
    "formats",
    type=click.Choice(["llava", "chat"]),
    multiple=True,
    help="Formats to write (default: both).",
)
@click.pass_context
def data_sft(
    ctx: click.Context,
    env_id: str,
    episodes: int,
    out: Path,
    seed: int,
    revision_fraction: float,
    formats: tuple[str, ...],
) -> None:
    """Write expert demonstrations (with revision episodes) for SFT.

    Environment options follow as --name value, e.g. `--mode image --suits black`.
    """
    from sftrl.commands.data_sft import write_sft_data
    from sftrl.config import SFTDataConfig

    try:
        options = parse_env_options(ctx.args)
        config = build(SFTDataConfig, {
            "env": {"id": env_id, "options": options}, "episodes": episodes, "seed": seed,
            "revision_fraction": revision_fraction, "formats": list(formats) or ["llava", "chat"],
            "out": str(out),
        })  # fmt: skip
        write_sft_data(config, console)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
