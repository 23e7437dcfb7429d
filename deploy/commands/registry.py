"""``sftrl runs``, ``sftrl checkpoints RUN``, ``sftrl registry resync``: reading and repairing the registry."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from sftrl.registry import CheckpointRecord, Registry, RunRecord


def _headline(metrics: dict[str, float]) -> str:
    shown = [
        f"{k.removeprefix('success/')} {v:.1%}"
        for k, v in sorted(metrics.items())
        if k.startswith("success/")
    ]
    return "  ".join(shown) or "-"


def print_runs(console: Console, runs: list[RunRecord]) -> None:
    if not runs:
        console.print("no runs registered (train one with `sftrl train`, or `sftrl registry resync DIR`)")
        return
    table = Table(title="runs")
    for col in ("run", "status", "model", "created", "folder"):
        table.add_column(col, overflow="fold")
    for run in runs:
        table.add_row(run.run_id, run.status, run.model, run.created, run.run_dir)
    console.print(table)


def print_checkpoints(console: Console, run_id: str, checkpoints: list[CheckpointRecord]) -> None:
    if not checkpoints:
        console.print(f"run {run_id!r} has no registered checkpoint")
        return
    table = Table(title=f"checkpoints of {run_id}")
    for col in (
        "checkpoint",
        "stage",
        "stage step",
        "final",
        "GFLOPs",
        "success (eval at this step)",
        "path",
    ):
        table.add_column(col, overflow="fold")
    for c in checkpoints:
        table.add_row(c.checkpoint_id, c.stage, str(c.stage_step), "yes" if c.final else "", f"{c.flops / 1e9:.3g}",
                      _headline(c.metrics), c.path)  # fmt: skip
    console.print(table)


def resync_command(console: Console, registry: Registry, roots: list[Path], prune: bool = False) -> None:
    from deploy.train.registry_sync import resync
    from sftrl.checkpoint import ROOTS_ENV

    report = resync(registry, roots, prune)
    console.print(
        f"re-synced {len(report.runs)} run(s), {report.checkpoints} checkpoint(s)"
        + (f"; dropped {len(report.dropped)} record(s) whose files are gone" if report.dropped else "")
    )
    for line in report.dropped:
        console.print(f"  dropped {line}", highlight=False)
    if report.unseen:
        console.print(
            f"kept {len(report.unseen)} run(s) whose folder is not visible here (--prune drops them):"
        )
    for line in report.unseen:
        console.print(f"  kept {line}", highlight=False, soft_wrap=True)
    if report.outside:
        console.print(f"kept {len(report.outside)} run(s) unread: their folder lies outside the folders named and "
                      f"the checkpoint roots ({ROOTS_ENV}); name the folder to re-read it:")  # fmt: skip
    for line in report.outside:
        console.print(f"  kept {line}", highlight=False, soft_wrap=True)
    for line in report.skipped:
        console.print(f"  [yellow]skipped[/] {line}", highlight=False, soft_wrap=True)
