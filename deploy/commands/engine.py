"""What every command that starts a rollout engine does first: check the model (it exists, the
context asked for fits it, answers leave room for a prompt) and resolve the precision, saying the
choice and its reason once, so that a user's mistake fails at once and the output records what ran."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Console

from services.rollout.config import EngineConfig
from services.rollout.context import fit_engine
from sftrl.hardware import describe_precision, resolve_precision

if TYPE_CHECKING:
    from deploy.studies.recipe import Study
    from deploy.train.config import TrainConfig


def prepare_engine(
    engine: EngineConfig,
    console: Console | None,
    max_tokens: int | None = None,
    models: Sequence[str] = (),
    prefix: str = "engine",
) -> tuple[EngineConfig, dict[str, str]]:
    """``engine`` with an explicit precision and (one model) an explicit context, and notes for the
    resolved config (``{prefix}.dtype``: why); ConfigError on a model that does not exist or is shorter
    than asked. ``models``: several models one engine setting serves in turn (each is checked; the
    context stays each model's own when it was not given)."""
    names = list(models) or [engine.model]
    fitted = [fit_engine(engine.model_copy(update={"model": name}), max_tokens) for name in names]
    value, reason = resolve_precision(engine.dtype, engine.device)
    update: dict[str, object] = {"dtype": value}
    if not models:
        update["max_model_len"] = fitted[0].max_model_len
    lengths = sorted({f.max_model_len or 0 for f in fitted})
    context = (
        " / ".join(map(str, lengths))
        + " tokens"
        + (" (set in the config)" if engine.max_model_len else " (the model's)")
    )
    if console is not None:
        console.print(f"[dim]{describe_precision(value, reason)}; context {context}[/]", highlight=False,
                      soft_wrap=True)  # fmt: skip
    notes = {f"{prefix}.dtype": f"{value} ({reason})", f"{prefix}.max_model_len": context}
    return engine.model_copy(update=update), notes


def _checkable(model: str, prepared_later: bool = False) -> bool:
    """Not ``@ARM`` (an earlier study arm's output: it exists once that arm ran), nor (``prepared_later``:
    a study prepares the catalogue models it starts from) a catalogue model not prepared yet."""
    from sftrl.models import CATALOG, find_prepared

    if model.startswith("@"):
        return False
    return not (prepared_later and model in CATALOG and find_prepared(model) is None)


def check_train_models(config: TrainConfig) -> None:
    """A training run's model exists and fits the rollout context asked for (made explicit: the
    model's own when unset, so the run's resolved config records it), and answers leave room for a
    prompt; a ConfigError before Ray and the learner start."""
    from services.envs import resolve_options

    resolve_options(config.env.id, config.env.options)  # the environment and its options, too
    for stage in config.stages:
        env = getattr(stage, "env", None)
        if env is not None:
            resolve_options(env.id, env.options)
    if not _checkable(config.model):
        return
    engine = config.rollout.engine.model_copy(update={"model": config.model})
    longest = max(config.rollout.sampling.max_tokens, config.eval.sampling.max_tokens)
    config.rollout.engine.max_model_len = fit_engine(engine, longest).max_model_len


def check_study_models(study: Study) -> None:
    """Every arm's model exists and fits its context, before the first arm starts (hours may pass)."""
    from deploy.studies.recipe import arm_config
    from deploy.train.config import TrainConfig

    seen: set[tuple[str, int | None]] = set()
    for arm in study.arms:
        config = arm_config(study, arm, lambda value: value)
        if isinstance(config, TrainConfig):
            pairs = [(config.model, config.rollout.engine)]
        else:  # data mixing (rl_model, sft_model) and merge sweeps (models): one engine setting each
            names = [
                getattr(config, "rl_model", None),
                getattr(config, "sft_model", None),
                *getattr(config, "models", []),
            ]
            pairs = [(name, config.engine) for name in names if isinstance(name, str)]
        for name, engine in pairs:
            if _checkable(name, prepared_later=True) and (name, engine.max_model_len) not in seen:
                seen.add((name, engine.max_model_len))
                fit_engine(engine.model_copy(update={"model": name}))
