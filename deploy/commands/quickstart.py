"""``sftrl quickstart``: the papers' question on this machine, answered with intervals.

From gp-base (a few-million-parameter model that reads the face-card rule from its prompt), the
gp-l-rule-ood study at tiny size: a short SFT on the ID rule (the init), then from it more SFT and
PPO; then a table of ID and rule-OOD success and rule adherence with 95% intervals, the report's
figure and what the intervals support.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from deploy.studies.recipe import Study

RECIPE = "gp-l-rule-ood"
NAME = "quickstart"
# evaluated at the end of each arm only: the table needs no more, and one evaluation of its 2 x 256
# episodes took 29-49 s on a 2-core AVX2-only EPYC (the recipe's evaluation intervals are size variables)
ENDS_ONLY = {"eval_every": 1_000_000, "rl_eval_every": 1_000_000}
# the suites the table shows; the fake-rule control (every episode plays all its attempts, the dearest
# suite) is left to `sftrl study gp-l-rule-ood`
SUITES = ("id", "ood_rule")


def results_table(study_dir: Path) -> Table:
    """Per arm: ID success, rule-OOD success and OOD rule adherence (95% intervals)."""
    from deploy.studies.report import collect_runs
    from deploy.studies.stats import cell, group_arms, mean_value, pooled

    arms = [a for a in group_arms(collect_runs([study_dir])) if a.kind == "train"]
    columns = (("ID success", "success", "id"), ("rule-OOD success", "success", "ood_rule"),
               ("OOD: numbers follow the stated rule", "adherence", "ood_rule"))  # fmt: skip
    table = Table(title=f"GeneralPoints, {len(arms[0].runs) if arms else 0} seed(s), 95% intervals",
                  title_justify="left")  # fmt: skip
    table.add_column("model")
    for title, _, _ in columns:
        table.add_column(title, justify="right")
    for arm in arms:
        table.add_row(arm.label, *(cell(pooled(arm.finals, m, s), mean_value(arm.finals, f"{m}/{s}"))
                                   for _, m, s in columns))  # fmt: skip
    return table


def quickstart_study(study: Study) -> Study:
    """The recipe cut to what the quickstart prints: the table's suites only, and no evaluation of
    the base before the SFT init (the table starts at the init)."""
    base = json.loads(json.dumps(study.base))
    suites = base.get("eval", {}).get("suites", {})
    ev = base.setdefault("eval", {})
    ev["suites"] = {k: v for k, v in suites.items() if k in SUITES} or suites
    ev["final_only"] = [k for k in ev.get("final_only", []) if k in ev["suites"]]
    arms = [a.model_copy(update={"config": {**a.config, "eval": {**a.config.get("eval", {}), "at_start": False}}})
            if a.name == "init" else a for a in study.arms]  # fmt: skip
    return study.model_copy(update={"base": base, "arms": arms})


def run_quickstart(
    output_dir: str, fresh: bool, overrides: list[str], console: Console, seeds: int = 1
) -> Path:
    from deploy.commands.engine import check_study_models
    from deploy.studies.recipe import load_study
    from deploy.studies.report import write_report
    from deploy.studies.runner import StudyRunner

    study = quickstart_study(
        load_study(RECIPE, "tiny", [f"name={NAME}", *overrides], seeds, variables=ENDS_ONLY)
    )
    check_study_models(study)  # the model (gp-base: copied on first use?) and its context, before any arm
    runner = StudyRunner(study, output_dir, console)
    if fresh and runner.dir.exists():
        shutil.rmtree(runner.dir)
    folder = runner.run()
    report = write_report([folder], folder / "report", title=f"sftrl quickstart: {study.title}")
    console.print(results_table(folder))
    # the report already answered the recipe's questions (bootstrapped once): its report.json has them
    answers = json.loads((report.parent / "report.json").read_text(encoding="utf-8"))["answers"]
    sentences = [a["sentence"] for a in answers]
    if sentences:  # the recipe's first question is the papers' own; the rest are in the report
        more = f" ({len(sentences) - 1} more answers in the report)" if len(sentences) > 1 else ""
        console.print(f"{sentences[0]}{more}", highlight=False, soft_wrap=True)
    console.print(f"figure: {folder / 'report' / 'success_vs_compute.png'}\nreport: {report}", soft_wrap=True)
    return folder
