"""``sftrl models prepare`` / ``sftrl models list``: the local model cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deploy.models.scratch import outdated_copy
from sftrl.config import build
from sftrl.hardware import describe_precision, resolve_precision
from sftrl.models.prepare import PrepareOptions, PrepareOutcome, prepare_model
from sftrl.models.store import CATALOG, folder_size, list_prepared, models_dir


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def prepare(name: str, given: dict[str, Any], force: bool, console: Console) -> PrepareOutcome:
    """Prepare ``name`` with the options the user gave (``None`` values are left out)."""
    options = build(PrepareOptions, {k: v for k, v in given.items() if v is not None}, source="options")
    if options.retrain:  # trains here: the learner's precision, said once
        console.print(describe_precision(*resolve_precision("auto", "cpu")), highlight=False, soft_wrap=True)
    with console.status(f"preparing {name}", spinner="dots") as status:

        def report(step: str) -> None:
            if console.is_terminal:
                status.update(f"preparing {name}: {step}")
            else:  # a log file shows no spinner: a 75-minute retrain would say nothing until it ends
                console.print(f"preparing {name}: {step}", highlight=False, soft_wrap=True)

        outcome = prepare_model(name, options, force=force, report=report)
    record = outcome.model.record
    if not outcome.built:
        console.print(
            f"{name} is already prepared in {outcome.model.path} (add --force to rebuild it)",
            highlight=False,
            soft_wrap=True,
        )
        if outdated_copy(name, record):
            console.print(
                "  it is a copy of the base an earlier sftrl shipped; --force copies this release's "
                "(studies replace it by themselves)",
                highlight=False,
                soft_wrap=True,
            )
        return outcome
    console.print(
        f"[green]prepared[/] {name} in {outcome.seconds:.1f} s: {record.architecture}, "
        f"{human_count(record.parameters)} parameters, vocabulary {record.vocab_size}, {record.dtype}",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"  folder: {outcome.model.path}", highlight=False, soft_wrap=True)
    console.print(f"  weights sha256: {record.weights_sha256}", highlight=False, soft_wrap=True)
    return outcome


def models_table(directory: Path | None = None) -> tuple[Table, list[str]]:
    """The table of prepared models and catalogue models not prepared yet, and those names."""
    directory = directory or models_dir()
    table = Table(title=f"models in {directory}", title_justify="left")
    for col in ("name", "kind", "parameters", "size", "folder"):
        table.add_column(col, overflow="fold")
    prepared = list_prepared(directory)
    for model in prepared:
        record = model.record
        table.add_row(
            record.name, record.kind, human_count(record.parameters),
            human_bytes(folder_size(model.path)), str(model.path),
        )  # fmt: skip
    names = {model.name for model in prepared}
    missing = [name for name in CATALOG if name not in names]
    for name in missing:
        table.add_row(name, CATALOG[name].kind, "-", "-", "[dim]not prepared[/]")
    return table, missing


def print_models(console: Console, directory: Path | None = None) -> None:
    table, missing = models_table(directory)
    console.print(table)
    for name in missing:
        console.print(
            f"{name}: {CATALOG[name].description}\n  [dim]prepare with:[/] sftrl models prepare {name}",
            highlight=False,
            soft_wrap=True,
        )
