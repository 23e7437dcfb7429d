"""``sftrl evaluate CHECKPOINT``: evaluate a registered checkpoint in this process (no Ray).

The same code path as the endpoint's replicas (deploy.evaluate.checkpoint), so a seed gives the same
numbers here and over HTTP; the result is stored in the registry like the endpoint's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.evaluate.checkpoint import EvalRequest, create_evaluation, execute_evaluation, load_rollout
from sftrl.checkpoint import checkpoint_roots as sftrl_checkpoint_roots
from sftrl.hardware import describe_precision, resolve_precision
from sftrl.registry import EvaluationRecord, Registry


def evaluate_command(
    console: Console,
    registry: Registry,
    request: EvalRequest,
    engine_overrides: dict[str, Any],
    checkpoint_roots: Sequence[str] = (),
) -> EvaluationRecord:
    """Run ``request`` here; checkpoints load only from ``checkpoint_roots`` (default: the usual
    roots, :func:`sftrl.checkpoint.checkpoint_roots`)."""
    roots = sftrl_checkpoint_roots(checkpoint_roots)
    record = create_evaluation(registry, request, roots=roots)
    if record.note:
        console.print(f"[yellow]{record.note}[/]", highlight=False)
    console.print(f"evaluation {record.eval_id}: {record.checkpoint_id} on {record.suite.name} "
                  f"({record.suite.env}), {record.episodes} episodes x {record.samples}, seed {record.seed}", highlight=False)  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    def load(ckpt: Any, run_config: dict[str, Any]) -> Any:
        worker = load_rollout(ckpt, run_config, roots, **engine_overrides)
        engine = worker.engine.config  # default settings and this command's options (never the run's record)
        value, reason = resolve_precision(engine.dtype, engine.device)
        console.print(f"[dim]{describe_precision(value, reason)}; context {engine.max_model_len} tokens[/]",
                      highlight=False, soft_wrap=True)  # fmt: skip
        return worker

    with Progress(*columns, console=console) as progress:
        task = progress.add_task("episodes", total=record.episodes * record.samples)
        done = execute_evaluation(
            registry, record.eval_id, load, on_progress=lambda n: progress.update(task, completed=n)
        )
    if done.status != "done":
        raise RuntimeError(f"evaluation {done.eval_id} failed: {done.error}")
    table = Table(title=f"{done.checkpoint_id} on {done.suite.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(done.metrics.items()):
        table.add_row(
            key,
            f"{value:.1%}"
            if key.startswith(("success", "error_rate", "recog", "field", "adherence", "pass@", "valid"))
            else f"{value:.3g}",
        )
    console.print(table)
    return done
