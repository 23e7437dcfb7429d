"""``sftrl report``: a Markdown report with figures in the papers' style from runs and studies.

Runs of one study arm (one per seed) are pooled (deploy.studies.stats): every rate is given with its
95% interval, in tables and figures. Figures (PNG): episode success on every suite against training
compute, one line per arm (paper 1); final success per suite; the differences the study asks about;
recognition accuracy against compute for image runs; accuracy per difficulty level (paper 2); merge
ratios against success. Tables: the final evaluation of every arm (the combination table when the
runs are a study's arms), rule adherence, the per-level accuracies, the merge sweep; then one sentence
per question of the study on what its interval supports. ``report.json`` holds the numbers;
``outcomes.json`` beside it the final evaluations' per-episode outcomes (paired re-analysis).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from deploy.evaluate.levels import LEVEL_FILL_FILE, LEVEL_SPEC_FILE
from deploy.studies import figures
from deploy.studies.data_mixing import mixed_counts, recipe_counts
from deploy.studies.frontier import frontier_section
from deploy.studies.intervals import mean_interval
from deploy.studies.level_report import level_section
from deploy.studies.outcomes import OUTCOMES_FILE, with_outcomes, without_outcomes, write_outcomes
from deploy.studies.pick import PICKED_FILE
from deploy.studies.provenance import started_from
from deploy.studies.stats import Arm, answer, cell, curve, group_arms, mean_value, pooled
from deploy.train.metrics import read_metrics


def collect_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every run under ``paths`` (a run folder, or a study folder of arms), with its numbers.

    A study's runs carry ``arm`` (the arm's name) and ``seed``: one run per arm and seed."""
    runs: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{path} is not a folder (give run or study folders)")
        if (path / "study.yaml").exists():
            runs += _study_runs(path, yaml.safe_load((path / "study.yaml").read_text()) or {})
        elif (path / "metrics.jsonl").exists() or (path / "sweep.json").exists():
            runs.append(_run(path, path.name, "merge_sweep" if (path / "sweep.json").exists() else "train"))
        else:
            raise ValueError(f"{path} holds no run (metrics.jsonl), sweep (sweep.json) or study (study.yaml)")
    return runs


def _study_runs(path: Path, study: dict[str, Any]) -> list[dict[str, Any]]:
    """A study's arms, seed by seed (``seed-<k>/<arm>``; a study of one seed written before seeds
    existed keeps its arms at the top)."""
    arms = study.get("arms", [])
    seeds = [(k, path / f"seed-{k}") for k in range(int(study["seeds"]))] if "seeds" in study else [(0, path)]
    runs: list[dict[str, Any]] = []
    first_seed: dict[str, dict[str, Any]] = {}
    for seed, folder in seeds:
        done: dict[str, dict[str, Any]] = {}
        for arm in arms:
            arm_dir = folder / arm["name"]
            if not (arm_dir / "DONE").is_file():  # finished arms only: a half-run arm would skew the pooling
                continue
            run = _run(arm_dir, arm.get("label") or arm["name"], arm.get("kind", "train"))
            run |= {"study": str(path), "arm": arm["name"], "seed": seed}
            marker = json.loads((arm_dir / "DONE").read_text() or "{}")
            if not isinstance(marker, dict):
                marker = {}
            if isinstance(marker.get("seconds"), int | float):
                run["seconds"] = float(marker["seconds"])
            config = arm.get("config") or {}
            if "counts" in run:
                run["counts"] = recipe_counts(run["counts"], config)
            parent = str(config.get("model", ""))
            if parent.startswith("@") and parent[1:] in done:  # compute counts from the start
                _offset_compute(run, done[parent[1:]].get("gflops", 0.0))
                _start_at_parent(run, done[parent[1:]])
            elif (played := _start_played_by(marker, arm["name"])) in first_seed:
                _start_at_first_seeds(run, first_seed[played])
            if not first_seed.get(arm["name"]):
                first_seed[arm["name"]] = run
            done[arm["name"]] = run
            runs.append(run)
    return runs


def _start_played_by(marker: dict[str, Any], arm: str) -> str | None:
    """The seed-0 arm whose start evaluation an arm took (its DONE marker: ``seed-0`` for the same arm,
    ``seed-0/<arm>`` for another arm from the same model)."""
    found = marker.get("start_evaluation")
    if found == "seed-0":
        return arm
    if isinstance(found, str) and found.startswith("seed-0/"):
        return found.removeprefix("seed-0/")
    return None


def _run(folder: Path, label: str, kind: str) -> dict[str, Any]:
    run: dict[str, Any] = {"label": label, "kind": kind, "dir": str(folder)}
    if kind == "train":
        records = read_metrics(folder / "metrics.jsonl")
        evals = with_outcomes(records)
        run["evals"] = evals
        run["final"] = evals[-1] if evals else {}
        run["suites"] = sorted({k.split("/")[1] for r in evals for k in r if k.startswith("success/")})
        run["gflops"] = (evals[-1].get("flops", 0.0) / 1e9) if evals else 0.0
        run["attempts"] = _attempts_allowed(folder)
    if (folder / "levels.json").exists():
        run["levels"] = json.loads((folder / "levels.json").read_text())
        if (folder.parent / LEVEL_FILL_FILE).exists():  # how the seed's levels were filled, and with what
            run["level_fill"] = json.loads((folder.parent / LEVEL_FILL_FILE).read_text())
            spec = folder.parent / LEVEL_SPEC_FILE
            run["level_fill"]["options"] = (
                json.loads(spec.read_text()).get("options") if spec.exists() else None
            )
    if (folder / PICKED_FILE).exists():  # a pick arm: which arm or merge it chose, and by what
        run["picked"] = json.loads((folder / PICKED_FILE).read_text())
    if (folder / "sweep.json").exists():
        run["sweep"] = json.loads((folder / "sweep.json").read_text())
    if (folder / "counts.json").exists():
        run["counts"] = json.loads((folder / "counts.json").read_text())
    return run


def _attempts_allowed(folder: Path) -> dict[str, int]:
    """Answers an evaluation episode allows per suite (the environment's ``verify_iter``, a suite's own
    over it), from the run's resolved config; empty where the environment has no such option."""
    path = folder / "resolved_config.yaml"
    config = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    base = (config.get("env") or {}).get("options") or {}
    suites = (config.get("eval") or {}).get("suites") or {}
    found = {name: {**base, **(own or {})}.get("verify_iter") for name, own in suites.items()}
    return {name: n for name, n in found.items() if isinstance(n, int)}


def _offset_compute(run: dict[str, Any], gflops: float) -> None:
    """An arm that starts from another arm's checkpoint carries that arm's training compute."""
    if run["kind"] != "train" or not gflops:
        return
    run["evals"] = [e | {"flops": e.get("flops", 0.0) + gflops * 1e9} for e in run["evals"]]
    run["final"] = run["evals"][-1] if run["evals"] else {}
    run["gflops"] = run["gflops"] + gflops
    run["compute_offset_gflops"] = gflops


def _start_at_parent(run: dict[str, Any], parent: dict[str, Any]) -> None:
    """An arm that skipped evaluating its starting model (the parent's final checkpoint, evaluated
    already) starts its curve at the parent's final evaluation."""
    evals = run.get("evals") or []
    if parent.get("final"):
        stage = evals[0]["stage"] if evals else ""
        _prepend_start(run, parent["final"] | {"stage": stage, "stage_step": 0, "global_step": 0})


def _start_at_first_seeds(run: dict[str, Any], first: dict[str, Any]) -> None:
    """An arm of a later seed that starts from the same model as the first seed's, evaluated the same
    way (same tasks, greedy or seeded sampling), did not play that evaluation again: its curve starts at
    the first seed's."""
    theirs = first.get("evals") or []
    if theirs and theirs[0].get("global_step") == 0:
        _prepend_start(run, theirs[0])


def _prepend_start(run: dict[str, Any], start: dict[str, Any]) -> None:
    """``start`` as the first evaluation of a training run that has none at global step 0."""
    evals = run.get("evals") or []
    if run["kind"] != "train" or (evals and evals[0].get("global_step") == 0):
        return
    run["evals"] = [start, *evals]
    run["final"] = run["evals"][-1]


# Per environment (found by its adherence field): what its adherence pair means, and the fields of
# first answers shown beside it. GeneralPoints is the default, for records that name no field.
ADHERENCE_VIEWS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "numbers": ("numbers that follow the rule the prompt states / the training rule instead; "
                "then the share with a correct formula", (("formula_correct", "formula correct"),)),
    "turn_stated_space": ("V-IRL, the first attempt at each point: turns in the action space the prompt "
                          "states / the expert's absolute (training-space) turn instead, at turns; then the "
                          "share of points with the expert's action and with a right intersection claim",
                          (("action", "action right"), ("intersection", "intersection claim right"))),
}  # fmt: skip


def _adherence_views(arms: list[Arm], suites: list[str]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The views of :data:`ADHERENCE_VIEWS` whose adherence field some final evaluation holds."""
    found = [view for name, view in ADHERENCE_VIEWS.items()
             if any(f"field/{s}/{name}" in f for a in arms for f in a.finals for s in suites)]  # fmt: skip
    return found or [ADHERENCE_VIEWS["numbers"]]


def _adherence_table(arms: list[Arm], suites: list[str]) -> list[str]:
    """First answers that follow what the prompt states (and, after the slash, are right under the
    training rule or action space instead), and the fields beside them: what a model read, apart
    from whether it won."""
    shown = [s for s in suites if any(f"adherence/{s}" in f for a in arms for f in a.finals)]
    if not shown:
        return []
    views = _adherence_views(arms, shown)
    columns = [column for _, cols in views for column in cols]
    lines = ["## Rule adherence", "",
             "First answers: " + "; ".join(text for text, _ in views)
             + " (95% intervals over the pooled first answers).", "",
             "| run | " + " | ".join(f"adherence ({s})" for s in shown) + " | "
             + " | ".join(f"{label} ({s})" for _, label in columns for s in shown) + " |",
             "|---|" + "---|" * ((1 + len(columns)) * len(shown))]  # fmt: skip
    for arm in arms:
        f = arm.finals
        cells = [cell(pooled(f, "adherence", s), mean_value(f, f"adherence/{s}"))
                 + (f" / {cell(pooled(f, 'adherence_training', s), mean_value(f, f'adherence_training/{s}'))}"
                    if mean_value(f, f"adherence_training/{s}") is not None else "") for s in shown]  # fmt: skip
        cells += [cell(None, mean_value(f, f"field/{s}/{name}")) for name, _ in columns for s in shown]
        lines.append(f"| {arm.label} | " + " | ".join(cells) + " |")
    return lines + [""]


def default_title(paths: list[str | Path]) -> str:
    """A single study's own title and size; otherwise a generic one."""
    if len(paths) == 1 and (Path(paths[0]) / "study.yaml").exists():
        study = yaml.safe_load((Path(paths[0]) / "study.yaml").read_text()) or {}
        if study.get("title"):
            return f"{study['title']} ({study.get('size', '?')})"
    return "sftrl report"


def _questions(paths: list[str | Path]) -> list[dict[str, Any]]:
    """The questions of the studies among ``paths``."""
    found = []
    for path in paths:
        if (Path(path) / "study.yaml").exists():
            asked = (yaml.safe_load((Path(path) / "study.yaml").read_text()) or {}).get("questions") or []
            found += [{**q, "study": str(Path(path))} for q in asked]
    return found


def _kl_table(arms: list[Arm]) -> list[str]:
    """Forward KL per token from each arm's start (and from the study's base) at its final evaluation:
    the mean over seeds, with t over the seeds (one seed: its bootstrap over answers)."""
    names = sorted({k.split("/", 1)[1] for a in arms for f in a.finals for k in f if k.startswith("kl/")})
    if not names:
        return []

    def shown(arm: Arm, name: str) -> str:
        found = [f for f in arm.finals if isinstance(f.get(f"kl/{name}"), int | float)]
        if len(found) != len(arm.finals):
            return "-"
        values = [f[f"kl/{name}"] for f in found]
        if len(values) == 1:
            low, high = found[0].get(f"kl_low/{name}"), found[0].get(f"kl_high/{name}")
            both = isinstance(low, int | float) and isinstance(high, int | float)
            return f"{values[0]:.3f} ({low:.3f} to {high:.3f})" if both else f"{values[0]:.3f}"
        got = mean_interval(values)
        return f"{got.estimate:.3f} ({got.low:.3f} to {got.high:.3f})"

    lines = ["## KL from the start", "",
             "Forward KL(start || final) in nats per token, on ID answers the start sampled at temperature 1 "
             "(`deploy/train/kl_probe.py`); `start` is the arm's own starting model, `base` the study's base. "
             "Mean over seeds with its 95% interval (t over the seeds; one seed: a bootstrap over its answers).", "",
             "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]  # fmt: skip
    lines += [f"| {arm.label} | " + " | ".join(shown(arm, n) for n in names) + " |" for arm in arms]
    return lines + [""]


def _frontiers(paths: list[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    """The frontier specs of the studies among ``paths`` (a study without one: none)."""
    found = []
    for path in paths:
        if (Path(path) / "study.yaml").exists():
            spec = (yaml.safe_load((Path(path) / "study.yaml").read_text()) or {}).get("frontier")
            found += [(str(Path(path)), spec)] if isinstance(spec, dict) else []
    return found


def _final_table(arms: list[Arm], suites: list[str]) -> list[str]:
    recog = sorted(
        {k.split("/")[1] for a in arms for f in a.finals for k in f if k.startswith("recognition_accuracy/")}
    )
    header = ["seeds"] + suites + ["reward (id)"] + [f"recognition ({s})" for s in recog] + ["GFLOPs"]
    episodes = {
        int(f[f"episodes/{s}"]) for a in arms for f in a.finals for s in suites if f"episodes/{s}" in f
    }
    allowed = {s: sorted({r["attempts"][s] for a in arms for r in a.runs if s in r.get("attempts", {})})
               for s in suites}  # fmt: skip
    notes = [f"{'/'.join(map(str, sorted(episodes)))} episodes per suite and seed"] if episodes else []
    if any(allowed.values()):
        notes.append("answers an episode allows: " + ", ".join(f"{s} {'/'.join(map(str, n))}"
                                                               for s, n in allowed.items() if n))  # fmt: skip
    per_suite = f" ({'; '.join(notes)})" if notes else ""
    lines = ["## Final evaluation", "",
             f"Episode success per suite{per_suite}: the rate over every seed's episodes with its 95% "
             "interval (Wilson); then the mean over seeds of the rest.", "",
             "| run | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]  # fmt: skip
    for arm in arms:
        f = arm.finals
        cells = [str(len(arm.runs))] + [
            cell(pooled(f, "success", s), mean_value(f, f"success/{s}")) for s in suites
        ]
        reward = mean_value(f, "reward/id")
        cells.append(f"{reward:.2f}" if reward is not None else "-")
        cells += [cell(None, mean_value(f, f"recognition_accuracy/{s}")) for s in recog]
        gflops = sum(r.get("gflops", 0.0) for r in arm.runs) / len(arm.runs)
        lines.append(f"| {arm.label} | " + " | ".join(cells) + f" | {gflops:.3g} |")
    return lines + [""]


def _along_training(arms: list[Arm], suites: list[str]) -> list[str]:
    """Success at every evaluation of each arm (pooled over seeds): where a run still climbs and
    where it has reached its plateau."""
    lines = ["## Along training", "",
             "Episode success at each evaluation (pooled over seeds), with the training compute (GFLOPs) "
             "reached there.", ""]  # fmt: skip
    for suite in [s for s in ("id", "ood_rule") if s in suites] or suites[:1]:
        lines.append(f"- {suite}:")
        for arm in arms:
            points = curve(arm, "success", suite)
            path = " → ".join(f"{v:.1%} ({g:.3g})" for g, v, _ in points)
            lines.append(f"  - {arm.label}: {path}")
    return lines + [""]


def _answers(
    questions: list[dict[str, Any]], arms: list[Arm], out: Path
) -> tuple[list[str], list[tuple[str, str]], list[dict[str, Any]]]:
    """A sentence per question, the figure of their differences, and the answers for report.json."""
    if not questions:
        return [], [], []
    lines, drawn, answers = ["## What the intervals support", ""], [], []
    for q in questions:
        sentence, found = answer(q, arms)
        lines.append(f"- {sentence}")
        answers.append({**q, "sentence": sentence} | ({"difference": vars(found)} if found else {}))
        if found is not None:
            by_key = {a.name: a.label for a in arms if a.key == f"{q['study']}/{a.name}"}
            drawn.append(
                (
                    f"{q.get('metric', 'success')} {q.get('suite', 'id')}: {by_key[q['a']]} - {by_key[q['b']]}",
                    found,
                )
            )
    lines.append("")
    name = figures.question_forest(drawn, out, "differences.png")
    return lines, [("Differences the study asks about (95% intervals)", name)] if name else [], answers


def _merge_section(arm: Arm, out: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Merges at several ratios: success per ratio pooled over the arm's seeds."""
    sweeps = [r["sweep"] for r in arm.runs]
    rows_by_seed = [s["rows"] for s in sweeps]
    suites, method = list(sweeps[0]["config"]["suites"]), sweeps[0]["config"]["method"]
    ratios = [x["ratio"] for x in rows_by_seed[0]]
    at = [[rows[i] for rows in rows_by_seed if i < len(rows)] for i in range(len(ratios))]
    intervals = {s: [pooled(rows, "success", s) for rows in at] for s in suites}
    values = {s: [mean_value(rows, f"success/{s}") or 0.0 for rows in at] for s in suites}
    name = figures.merge_curve(ratios, intervals, values, method, out, f"merge-{arm.name}.png")
    lines = [f"## Merges: {arm.label}", "",
             f"Episode success of {method} merges; ratio = share of the second model (0: the first model).",
             "", "| ratio | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]  # fmt: skip
    reused = sorted(
        {(x["ratio"], x["evaluated_by"]) for rows in rows_by_seed for x in rows if "evaluated_by" in x}
    )
    if reused:  # an end point is a model unchanged: its arm's final evaluation, not played again
        said = ", ".join(f"{ratio:.2f} is arm {arm_name}'s" for ratio, arm_name in reused)
        lines[2] += f" Ratio {said} final evaluation (the same weights, evaluated the same way)."
    lines += [f"| {ratio:.2f} | " + " | ".join(cell(intervals[s][i], values[s][i]) for s in suites) + " |"
              for i, ratio in enumerate(ratios)]  # fmt: skip
    return lines + [""], [(f"{arm.label}: success of {method} merges", name)]


def _run_time(arms: list[Arm]) -> list[str]:
    """Wall time per arm (mean over seeds) and per seed, when the study recorded it for every arm."""
    if not arms or not all("seconds" in r for a in arms for r in a.runs):
        return []
    per_seed: dict[int, float] = {}
    for run in (r for a in arms for r in a.runs):
        per_seed[run.get("seed", 0)] = per_seed.get(run.get("seed", 0), 0.0) + run["seconds"]
    lines = ["## Run time", "",
             "Wall time on the machine that ran the study (an arm resumed after a stop: its last attempt).", "",
             "| arm | minutes per seed (mean) | seeds |", "|---|---|---|"]  # fmt: skip
    lines += [f"| {a.label} | {sum(r['seconds'] for r in a.runs) / len(a.runs) / 60:.1f} | {len(a.runs)} |"
              for a in arms]  # fmt: skip
    total = sum(per_seed.values())
    seeds = ", ".join(f"seed {k}: {v / 60:.1f} min" for k, v in sorted(per_seed.items()))
    return lines + ["", f"In all {total / 60:.1f} minutes ({seeds}).", ""]


def write_report(paths: list[str | Path], out_dir: str | Path, title: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(paths)
    arms = group_arms(runs)
    trained = [a for a in arms if a.kind == "train" and all(r.get("evals") for r in a.runs)]
    suites = sorted({s for a in trained for r in a.runs for s in r["suites"]})
    seeds = sorted({len(a.runs) for a in arms})
    lines = [f"# {title or default_title(paths)}", "", f"Runs: {', '.join(a.label for a in arms)}",
             f"Seeds per arm: {'/'.join(map(str, seeds))}. Every figure is given with its 95% interval where the "
             "runs counted their episodes.", ""]  # fmt: skip
    base_lines, models = started_from(paths)
    lines += base_lines
    shown: list[tuple[str, str]] = []
    if trained and suites:  # paper 1: success (and, telling at small scale, reward) against compute
        shown.append(("Episode success against training compute (95% intervals)",
                      figures.compute_curves(trained, suites, "success", "episode success", out, "success_vs_compute.png")))  # fmt: skip
        shown.append(("Mean episode reward against training compute",
                      figures.compute_curves(trained, suites, "reward", "mean episode reward", out, "reward_vs_compute.png")))  # fmt: skip
        bars = figures.final_bars(
            trained, suites, "success", "final episode success", out, "final_success.png"
        )
        if bars:
            shown.append(("Final episode success per suite (95% intervals)", bars))
        lines += (
            _final_table(trained, suites)
            + _adherence_table(trained, suites)
            + _kl_table(trained)
            + _along_training(trained, suites)
        )
    section, drawn, answers = _answers(_questions(paths), arms, out)
    lines, shown = lines + section, shown + drawn
    for study, spec in _frontiers(paths):
        section, drawn, found = frontier_section(spec, arms, study, out)
        lines, shown = lines + section, shown + drawn
        answers += [{"study": study, "frontier": found}] if found else []
    if any(k.startswith("recognition_accuracy/") for a in trained for f in a.finals for k in f):
        shown.append(("Recognition accuracy against training compute",
                      figures.recognition_curves(trained, out, "recognition.png")))  # fmt: skip
    section, drawn = level_section(arms, out)
    lines, shown = lines + section, shown + drawn
    for arm in [a for a in arms if all("sweep" in r for r in a.runs)]:
        section, drawn = _merge_section(arm, out)
        lines, shown = lines + section, shown + drawn
    for arm in [a for a in arms if all("counts" in r for r in a.runs)]:
        lines += [
            f"Data mixing ({arm.label}, {len(arm.runs)} seed(s)): {mixed_counts([r['counts'] for r in arm.runs])}",
            "",
        ]
    lines += _run_time(arms)
    lines += ["## Figures", ""] + [f"### {caption}\n\n![{caption}]({name})\n" for caption, name in shown]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = [{k: v for k, v in r.items() if k != "evals"} | {"evals": [without_outcomes(e) for e in r.get("evals", [])]}
           for r in runs]  # fmt: skip
    raw = [r | {"final": without_outcomes(r.get("final") or {})} if "final" in r else r for r in raw]
    raw = [r | {"sweep": r["sweep"] | {"rows": [without_outcomes(x) for x in r["sweep"].get("rows", [])]}}
           if isinstance(r.get("sweep"), dict) else r for r in raw]  # fmt: skip
    body = {"runs": raw, "answers": answers} | ({"models": models} if models else {})
    (out / "report.json").write_text(json.dumps(body, indent=1, default=float), encoding="utf-8")
    write_outcomes(runs, out / OUTCOMES_FILE)
    return out / "report.md"
