"""``sftrl difficulty``: tag a suite's items with levels L1..L5, or report a model's accuracy per level."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.evaluate.levels import (
    LEVELS,
    accuracy_by_level,
    fill_levels,
    level_counts,
    read_tagged,
    tag_items,
    write_tagged,
)
from services.rollout.config import EngineConfig, SamplingConfig

if TYPE_CHECKING:
    from services.rollout.worker import RolloutWorker

_COLUMNS = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _engine(console: Console, model: str, engine: dict[str, Any], sampling: SamplingConfig) -> EngineConfig:
    """The engine settings on ``model``: the model checked (exists, context fits), precision said once."""
    from deploy.commands.engine import prepare_engine
    from sftrl.config import build

    config = build(EngineConfig, {**engine, "model": model}, source="engine settings")
    return prepare_engine(config, console, sampling.max_tokens)[0]


def _rollout(model: str, engine: EngineConfig) -> RolloutWorker:
    from services.rollout.worker import RolloutWorker

    return RolloutWorker.on_model(model, engine)


def tag_command(
    console: Console, model: str, env_id: str, options: dict[str, Any], items: int, samples: int, seed: int,
    sampling: SamplingConfig, out: Path, engine: dict[str, Any], per_level: int | None = None,
) -> Path:  # fmt: skip
    """Tag ``items`` items, or (``per_level``) draw until every level holds that many, at most ``items``."""
    from services.envs import resolve_options

    options = resolve_options(env_id, options)
    rollout = _rollout(model, _engine(console, model, engine, sampling))
    try:
        with Progress(*_COLUMNS, console=console) as progress:
            if per_level is None:
                task = progress.add_task(f"{items} items x {samples} samples", total=items * samples)
                tagged = tag_items(rollout, env_id, options, items, samples, seed, sampling, model_name=model,
                                   on_progress=lambda n: progress.update(task, completed=n))  # fmt: skip
            else:
                task = progress.add_task(f"{per_level} items per level (at most {items} drawn)", total=None)

                def filled(drawn: int, counts: dict[str, int]) -> None:
                    shown = " ".join(f"{k} {min(v, per_level)}" for k, v in counts.items())
                    progress.update(task, description=f"{drawn} drawn: {shown} of {per_level} each")

                tagged, fill = fill_levels(rollout, env_id, options, per_level, samples, seed, sampling,
                                           max_items=items, model_name=model, on_progress=filled)  # fmt: skip
    finally:
        rollout.shutdown()
    write_tagged(tagged, out)
    table = Table(title=f"levels of {len(tagged)} {env_id} items by {model} ({samples} samples each)")
    for level in LEVELS:
        table.add_column(f"L{level}", justify="right")
    table.add_row(*map(str, level_counts(tagged).values()))
    console.print(table)
    if per_level is not None and fill.short:
        said = fill.shortfall(most="--items", asked="--per-level")
        console.print(f"[yellow]{said}[/]", highlight=False)
    console.print(f"tagged set: {out}", highlight=False)
    return out


def levels_command(
    console: Console, model: str, levels_file: Path, sampling: SamplingConfig, out: Path | None,
    engine: dict[str, Any],
) -> dict[str, float]:  # fmt: skip
    tagged = read_tagged(levels_file)
    settings = _engine(console, model, engine, sampling)
    rollout = _rollout(model, settings)
    try:
        with Progress(*_COLUMNS, console=console) as progress:
            task = progress.add_task("episodes", total=len(tagged))
            metrics = accuracy_by_level(rollout, tagged, sampling,
                                        on_progress=lambda n: progress.update(task, completed=n))  # fmt: skip
    finally:
        rollout.shutdown()
    table = Table(title=f"{model}: accuracy per level on {levels_file.name}")
    table.add_column("level")
    table.add_column("items", justify="right")
    table.add_column("accuracy", justify="right")
    for level in LEVELS:
        if f"accuracy/L{level}" in metrics:
            table.add_row(
                f"L{level}", f"{metrics[f'items/L{level}']:.0f}", f"{metrics[f'accuracy/L{level}']:.1%}"
            )
    table.add_row("all", str(len(tagged)), f"{metrics['accuracy']:.1%}")
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": model,
            "levels": str(levels_file),
            "sampling": sampling.model_dump(),
            "engine": {"dtype": settings.dtype, "max_model_len": settings.max_model_len},
            "metrics": metrics,
        }
        out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
        console.print(f"results: {out}", highlight=False)
    return metrics
