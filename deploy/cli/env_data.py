"""``sftrl env``, ``sftrl data`` and ``sftrl rollout``: environments, demonstrations, episodes."""

from __future__ import annotations

from pathlib import Path

import click

from deploy.cli.base import EXTRA_ARGS, console, main, parse_env_options
from sftrl.config import apply_overrides, build

# -- environments ------------------------------------------------------------------------------


@main.group("env")
def env_group() -> None:
    """Inspect and play the environments."""


@env_group.command("list")
def env_list() -> None:
    """List the environments and their options."""
    from rich.table import Table

    from deploy.commands.env_list import describe_envs

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
    from deploy.commands.env_play import play_episode

    play_episode(env_id, parse_env_options(ctx.args), seed, image_out, console)


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

    Environment options follow as --name value, e.g. `--mode image --suits black`; GeneralPoints'
    `--reasoning short|long` writes the expert's search in <think></think> before each answer (and the
    prompt asks for it).
    """
    from deploy.commands.data_sft import write_sft_data
    from sftrl.config import SFTDataConfig

    options = parse_env_options(ctx.args)
    config = build(SFTDataConfig, {
        "env": {"id": env_id, "options": options}, "episodes": episodes, "seed": seed,
        "revision_fraction": revision_fraction, "formats": list(formats) or ["llava", "chat"],
        "out": str(out),
    })  # fmt: skip
    write_sft_data(config, console)


@data_group.command("mix", context_settings=EXTRA_ARGS)
@click.option("--rl-model", required=True, help="The RL model: its successful episodes make the set.")
@click.option("--sft-model", required=True, help="The SFT model: its episodes fill the tasks RL failed.")
@click.option("--env", "env_id", required=True, help="Environment id; its options follow as --name value.")
@click.option("--tasks", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--samples", type=click.IntRange(min=1), default=1, show_default=True, help="Attempts per task."
)
@click.option("--seed", type=int, default=30_000, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Chat JSONL file."
)
@click.pass_context
def data_mix(ctx: click.Context, rl_model: str, sft_model: str, env_id: str, tasks: int, samples: int, seed: int,
             max_tokens: int, device: str, out: Path) -> None:  # fmt: skip
    """Data mixing (paper 2): RL model's successes, the SFT model's only where RL failed."""
    from deploy.commands.engine import prepare_engine
    from deploy.studies.data_mixing import DataMixConfig, mix_datasets
    from services.envs import resolve_options

    config = build(DataMixConfig, {
        "rl_model": rl_model, "sft_model": sft_model, "tasks": tasks, "samples": samples, "seed": seed,
        "env": {"id": env_id, "options": parse_env_options(ctx.args)}, "out": str(out),
        "sampling": {"temperature": 1.0, "max_tokens": max_tokens}, "engine": {"device": device},
    }, source="data mix")  # fmt: skip
    resolve_options(config.env.id, config.env.options)  # a bad option fails before an engine starts
    # both models exist and fit; the precision is resolved (and said) once, each engine takes its model's context
    config.engine, _ = prepare_engine(
        config.engine, console, config.sampling.max_tokens, models=(rl_model, sft_model)
    )
    counts = mix_datasets(config, on_progress=lambda text: console.print(text, highlight=False))
    console.print(f"{counts['from_rl']} episodes from the RL model, {counts['from_sft']} from the SFT model, "
                  f"{counts['skipped']} tasks failed by both; wrote {counts['path']}", highlight=False)  # fmt: skip


# -- rollout -----------------------------------------------------------------------------------


@main.command("rollout", context_settings=EXTRA_ARGS)
@click.option("--model", default="tiny", show_default=True, help="Prepared model name, HF folder or hub id.")
@click.option("--env", "env_id", required=True, help="Environment id, e.g. sftrl/GeneralPoints-v0.")
@click.option("--episodes", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Trajectories file (.jsonl or .parquet); the resolved config is written beside it.",
)
@click.option("--samples-per-task", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--actors", type=click.IntRange(min=1), default=1, show_default=True, help="Rollout actors.")
@click.option(
    "--env-actors",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Environment actors (0: environments run inside the rollout actors).",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--in-process", is_flag=True, help="No Ray: one engine in this process (small runs).")
@click.option("--address", default=None, help="Ray address to join (default: a local Ray).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any rollout setting, e.g. --set rollout.engine.max_model_len=2048.",
)
@click.pass_context
def rollout_cmd(
    ctx: click.Context,
    model: str,
    env_id: str,
    episodes: int,
    out: Path,
    samples_per_task: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    actors: int,
    env_actors: int,
    device: str,
    in_process: bool,
    address: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Play episodes with a model on vLLM and write their trajectories.

    Environment options follow as --name value, e.g. `--face-cards as_11_12_13`.
    """
    from deploy.commands.rollout import RolloutRunConfig, run_rollout

    data = {
        "env_id": env_id, "env_options": parse_env_options(ctx.args), "episodes": episodes,
        "samples_per_task": samples_per_task, "seed": seed, "out": str(out), "in_process": in_process,
        "ray_address": address,
        "rollout": {
            "num_actors": actors, "env_actors": env_actors,
            "engine": {"model": model, "device": device, "seed": seed},
            "sampling": {"temperature": temperature, "max_tokens": max_tokens, "seed": seed},
        },
    }  # fmt: skip
    config = build(RolloutRunConfig, apply_overrides(data, overrides))
    run_rollout(config, console)
