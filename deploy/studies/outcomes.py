"""Per-episode outcomes in a report: read from a run's ``episodes`` records, kept beside report.json.

Each evaluation logs, after its ``eval`` record, an ``episodes`` record (deploy.train.metrics): per suite
the task of each episode, its success and its first answers' fields, with the commit and CPU. Reports
attach them to the evaluation they follow, pair arms by task with them (deploy.studies.stats), and
write the final evaluations' to ``outcomes.json`` rather than into report.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUTCOMES_FILE = "outcomes.json"  # beside report.json


def with_outcomes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's evaluation records, each with its per-episode outcomes (the ``episodes`` record logged
    after it) under ``"outcomes"``, where the run logged them."""
    evals, last = [], None
    for record in records:
        if record.get("kind") == "eval":
            last = dict(record)
            evals.append(last)
        elif (
            record.get("kind") == "episodes"
            and last is not None
            and last.get("global_step") == record.get("global_step")
        ):
            last["outcomes"] = {k: v for k, v in record.items() if k != "kind"}
    return evals


def without_outcomes(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "outcomes"}


def write_outcomes(runs: list[dict[str, Any]], path: Path) -> None:
    """The per-episode outcomes of every run's final evaluation and of every merge a sweep played (task,
    success, first-answer fields), with the commit and CPU that made them: what a paired re-analysis
    of the report needs."""

    def row(run: dict[str, Any], where: dict[str, Any], outcomes: dict[str, Any]) -> dict[str, Any]:
        return {"study": run.get("study"), "arm": run.get("arm") or run["label"], "seed": run.get("seed", 0),
                **where, **outcomes}  # fmt: skip

    rows = []
    for run in runs:
        final = run.get("final") or {}
        if final.get("outcomes"):
            rows.append(row(run, {"global_step": final.get("global_step")}, final["outcomes"]))
        sweep = run.get("sweep") if isinstance(run.get("sweep"), dict) else {}
        rows += [
            row(run, {"ratio": x.get("ratio")}, x["outcomes"])
            for x in sweep.get("rows", [])
            if x.get("outcomes")
        ]
    if rows:
        path.write_text(json.dumps({"runs": rows}) + "\n", encoding="utf-8")
    elif path.exists():  # an earlier report's outcomes would not be this report's
        path.unlink()
