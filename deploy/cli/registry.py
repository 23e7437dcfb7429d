"""``sftrl runs``, ``checkpoints``, ``registry``, ``evaluate`` and ``serve``: what was trained, and evaluating it."""

from __future__ import annotations

from pathlib import Path

import click

from deploy.cli.base import EXTRA_ARGS, console, fail, main, parse_env_options, unavailable
from sftrl.config import build

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
        raise unavailable("registry", exc) from exc


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
        raise unavailable("registry", exc) from exc


@main.group("registry")
def registry_group() -> None:
    """Maintain the registry (the run folders are the truth)."""


@registry_group.command("resync")
@click.argument("roots", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--prune", is_flag=True, help="Also drop registered runs whose folder is not visible here.")
def registry_resync(roots: tuple[Path, ...], prune: bool) -> None:
    """Rebuild the records of the runs under ROOTS (default: ./runs) and of every registered run."""
    from deploy.commands.registry import resync_command
    from sftrl.registry import REGISTRY_ERRORS, open_registry

    try:
        with open_registry() as registry:
            resync_command(console, registry, list(roots) or [Path("runs")], prune)
    except (RuntimeError, *REGISTRY_ERRORS) as exc:
        raise unavailable("registry", exc) from exc


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
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Engine precision; auto: bfloat16 where the hardware computes it natively.")  # fmt: skip
@click.option("--max-model-len", type=click.IntRange(min=128), default=None,
              help="Engine context in tokens (default: the model's own; more is refused).")  # fmt: skip
@click.option("--checkpoint-root", "checkpoint_roots", multiple=True, type=click.Path(file_okay=False),
              help="A folder checkpoints may be loaded from (repeatable; default: $SFTRL_CHECKPOINT_ROOTS, "
                   "else $SFTRL_HOME and this folder).")  # fmt: skip
@click.pass_context
def evaluate_cmd(ctx: click.Context, checkpoint: str, suite: str | None, env_id: str | None, episodes: int,
                 samples: int, seed: int, temperature: float | None, max_tokens: int | None, device: str,
                 threads: int | None, dtype: str, max_model_len: int | None,
                 checkpoint_roots: tuple[str, ...]) -> None:  # fmt: skip
    """Evaluate CHECKPOINT (RUN@STEP, or RUN for its latest) in this process; stored in the registry."""
    import redis

    from deploy.commands.evaluate import evaluate_command
    from deploy.evaluate.checkpoint import EvalRequest
    from sftrl.registry import SuiteSpec, open_registry

    if (suite is None) == (env_id is None):
        raise click.UsageError("give either --suite NAME or --env ID (with its options)")
    if suite is not None and ctx.args:
        raise click.UsageError("environment options go with --env, not --suite")
    if env_id is not None:
        from services.envs import options_model

        options_model(env_id)  # an unknown environment is named before the registry is asked
    target: str | SuiteSpec = (
        suite if suite is not None else SuiteSpec(env=env_id, options=parse_env_options(ctx.args))
    )
    sampling = None
    if temperature is not None or max_tokens is not None:
        sampling = {
            k: v for k, v in (("temperature", temperature), ("max_tokens", max_tokens)) if v is not None
        }
    request = build(EvalRequest, {"checkpoint": checkpoint, "suite": target, "episodes": episodes,
                                  "samples": samples, "seed": seed, "sampling": sampling}, source="evaluation")  # fmt: skip
    overrides = {"device": device, "dtype": dtype, "max_model_len": max_model_len,
                 **({"threads": threads} if threads else {})}  # fmt: skip
    try:
        with open_registry() as registry:
            evaluate_command(console, registry, request, overrides, checkpoint_roots)
    except redis.RedisError as exc:
        raise unavailable("registry", exc) from exc


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
@click.option("--checkpoint-root", "checkpoint_roots", multiple=True, type=click.Path(file_okay=False),
              help="A folder checkpoints may be loaded from (repeatable; default: $SFTRL_CHECKPOINT_ROOTS, "
                   "else $SFTRL_HOME and this folder).")  # fmt: skip
def serve_cmd(host: str, port: int, token_file: str | None, max_episodes: int, warm_models: int, device: str,
              address: str | None, data_dir: str | None, checkpoint_roots: tuple[str, ...]) -> None:  # fmt: skip
    """Serve the evaluation endpoint (Ray Serve + FastAPI) until Ctrl-C."""
    from deploy.commands.serve import serve_command

    settings = {"max_episodes": max_episodes, "warm_models": warm_models, "device": device}
    if token_file:
        settings["token_file"] = token_file
    if data_dir:
        settings["data_dir"] = data_dir
    if checkpoint_roots:  # absolute: the replicas may run in another working folder
        settings["checkpoint_roots"] = [str(Path(p).resolve()) for p in checkpoint_roots]
    serve_command(console, host, port, settings, address)
