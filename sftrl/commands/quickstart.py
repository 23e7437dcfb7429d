"""``sftrl quickstart``: prepare the tiny model, SFT then PPO on GeneralPoints, print ID vs OOD."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deploy.metrics import read_metrics

QUICKSTART_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def results_table(run_dir: Path) -> Table:
    """Success per suite at the start of each stage and at the end of the run."""
    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "eval"]
    suites = sorted({k.removeprefix("success/") for r in evals for k in r if k.startswith("success/")})
    table = Table(title=f"GeneralPoints success ({run_dir.name})", title_justify="left")
    table.add_column("model")
    for suite in suites:
        table.add_column(suite, justify="right")
    rows: list[tuple[str, dict]] = []
    for r in evals:
        if r["stage_step"] == 0:
            label = "base" if not rows else f"after {rows[-1][1]['stage']}"
            rows.append((label, r))
    if evals:
        rows.append((f"after {evals[-1]['stage']}", evals[-1]))
    for label, r in rows:
        table.add_row(label, *(f"{r.get(f'success/{s}', float('nan')):.1%}" for s in suites))
    return table


def run_quickstart(output_dir: str, fresh: bool, overrides: list[str], console: Console) -> Path:
    from deploy.train import Trainer, load_train_config
    from sftrl.models import find_prepared, prepare_model

    if find_prepared("tiny") is None:
        console.print("preparing the tiny model...")
        prepare_model("tiny")
    config = load_train_config(str(QUICKSTART_CONFIG), [f"output_dir={output_dir}", *overrides])
    run_dir = Path(config.output_dir) / config.run_name
    resume = run_dir.exists() and not fresh
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    trainer = Trainer(config, resume=resume, console=console)
    plot = trainer.run()
    console.print(results_table(trainer.run_dir))
    console.print(f"curves: {plot}\nmetrics: {trainer.run_dir / 'metrics.jsonl'}", soft_wrap=True)
    return trainer.run_dir
