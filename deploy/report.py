"""``sftrl report``: a Markdown report with figures in the papers' style from runs and studies.

Figures (PNG): episode success on every suite against training compute, one line per run (paper 1);
recognition accuracy against compute for image runs; accuracy per difficulty level (paper 2); merge
ratios against success. Tables: the final evaluation of every run (the combination table when the
runs are a study's arms), the per-level accuracies, the merge sweep. ``report.json`` holds the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from deploy.metrics import read_metrics

LEVEL_KEYS = [f"L{i}" for i in range(1, 6)]


def collect_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Every run under ``paths`` (a run folder, or a study folder of arms), with its numbers."""
    runs: list[dict[str, Any]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise ValueError(f"{path} is not a folder (give run or study folders)")
        if (path / "study.yaml").exists():
            study = yaml.safe_load((path / "study.yaml").read_text())
            labels = {a["name"]: a.get("label") or a["name"] for a in study.get("arms", [])}
            done: dict[str, dict[str, Any]] = {}
            for arm in study.get("arms", []):
                arm_dir = path / arm["name"]
                if arm_dir.is_dir():
                    run = _run(arm_dir, labels[arm["name"]], arm.get("kind", "train"))
                    parent = str((arm.get("config") or {}).get("model", ""))
                    if parent.startswith("@") and parent[1:] in done:  # compute counts from the start
                        _offset_compute(run, done[parent[1:]].get("gflops", 0.0))
                    done[arm["name"]] = run
                    runs.append(run)
        elif (path / "metrics.jsonl").exists() or (path / "sweep.json").exists():
            runs.append(_run(path, path.name, "merge_sweep" if (path / "sweep.json").exists() else "train"))
        else:
            raise ValueError(f"{path} holds no run (metrics.jsonl), sweep (sweep.json) or study (study.yaml)")
    return runs


def _run(folder: Path, label: str, kind: str) -> dict[str, Any]:
    run: dict[str, Any] = {"label": label, "kind": kind, "dir": str(folder)}
    if kind == "train":
        records = read_metrics(folder / "metrics.jsonl")
        evals = [r for r in records if r.get("kind") == "eval"]
        run["evals"] = evals
        run["final"] = evals[-1] if evals else {}
        run["suites"] = sorted({k.split("/")[1] for r in evals for k in r if k.startswith("success/")})
        run["gflops"] = (evals[-1].get("flops", 0.0) / 1e9) if evals else 0.0
    if (folder / "levels.json").exists():
        run["levels"] = json.loads((folder / "levels.json").read_text())
    if (folder / "sweep.json").exists():
        run["sweep"] = json.loads((folder / "sweep.json").read_text())
    if (folder / "counts.json").exists():
        run["counts"] = json.loads((folder / "counts.json").read_text())
    return run


def _offset_compute(run: dict[str, Any], gflops: float) -> None:
    """An arm that starts from another arm's checkpoint carries that arm's training compute."""
    if run["kind"] != "train" or not gflops:
        return
    run["evals"] = [e | {"flops": e.get("flops", 0.0) + gflops * 1e9} for e in run["evals"]]
    run["final"] = run["evals"][-1] if run["evals"] else {}
    run["gflops"] = run["gflops"] + gflops
    run["compute_offset_gflops"] = gflops


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "-"


def _adherence_table(trained: list[dict[str, Any]], suites: list[str]) -> list[str]:
    """First answers whose numbers follow the stated rule (and, after the slash, the training rule
    instead), and whose formula is correct: what a model read, apart from whether it won."""
    shown = [s for s in suites if any(f"adherence/{s}" in r["final"] for r in trained)]
    if not shown:
        return []
    lines = ["## Rule adherence", "",
             "First answers: numbers that follow the rule the prompt states / the training rule instead; "
             "then the share with a correct formula.", "",
             "| run | " + " | ".join(f"adherence ({s})" for s in shown) + " | "
             + " | ".join(f"formula correct ({s})" for s in shown) + " |",
             "|---|" + "---|" * (2 * len(shown))]  # fmt: skip
    for r in trained:
        f = r["final"]
        cells = [_pct(f.get(f"adherence/{s}")) + (f" / {_pct(f[f'adherence_training/{s}'])}"
                                                  if f"adherence_training/{s}" in f else "") for s in shown]  # fmt: skip
        cells += [_pct(f.get(f"field/{s}/formula_correct")) for s in shown]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines + [""]


def default_title(paths: list[str | Path]) -> str:
    """A single study's own title and size; otherwise a generic one."""
    if len(paths) == 1 and (Path(paths[0]) / "study.yaml").exists():
        study = yaml.safe_load((Path(paths[0]) / "study.yaml").read_text()) or {}
        if study.get("title"):
            return f"{study['title']} ({study.get('size', '?')})"
    return "sftrl report"


def write_report(paths: list[str | Path], out_dir: str | Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(paths)
    trained = [r for r in runs if r["kind"] == "train" and r["evals"]]
    suites = sorted({s for r in trained for s in r["suites"]})
    lines = [f"# {title or default_title(paths)}", "", f"Runs: {', '.join(r['label'] for r in runs)}", ""]
    figures: list[tuple[str, str]] = []

    if trained and suites:  # paper 1: success (and, telling at small scale, reward) against compute
        for metric, name, caption in (("success", "success_vs_compute.png", "Episode success"),
                                      ("reward", "reward_vs_compute.png", "Mean episode reward")):  # fmt: skip
            fig, axes = plt.subplots(1, len(suites), figsize=(4.6 * len(suites), 3.8), squeeze=False)
            for ax, suite in zip(axes[0], suites, strict=True):
                for r in trained:
                    pts = [(e.get("flops", 0.0) / 1e9, e.get(f"{metric}/{suite}")) for e in r["evals"]]
                    pts = [p for p in pts if p[1] is not None]
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=r["label"])
                ax.set_title(suite)
                ax.set_xlabel("training compute (GFLOPs)")
                if metric == "success":
                    ax.set_ylim(-0.02, 1.02)
            axes[0][0].set_ylabel(caption.lower())
            axes[0][-1].legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / name, dpi=110)
            plt.close(fig)
            figures.append((f"{caption} against training compute", name))
        recog_suites = sorted({k.split("/")[1] for r in trained for k in r["final"]
                               if k.startswith("recognition_accuracy/")})  # fmt: skip
        header = suites + ["reward (id)"] + [f"recognition ({s})" for s in recog_suites] + ["GFLOPs"]
        lines += ["## Final evaluation", "", "Episode success per suite, then the rest.", "",
                  "| run | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]  # fmt: skip
        for r in trained:
            f = r["final"]
            cells = [_pct(f.get(f"success/{s}")) for s in suites]
            reward = f.get("reward/id")
            cells.append(f"{reward:.2f}" if reward is not None else "-")
            cells += [_pct(f.get(f"recognition_accuracy/{s}")) for s in recog_suites]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['gflops']:.3g} |")
        lines.append("")
        lines += _adherence_table(trained, suites)

    recog = [r for r in trained if any("recognition_accuracy/" in k for e in r["evals"] for k in e)]
    if recog:  # paper 1: RL improves visual recognition
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for r in recog:
            for key in sorted({k for e in r["evals"] for k in e if k.startswith("recognition_accuracy/")}):
                pts = [(e.get("flops", 0.0) / 1e9, e[key]) for e in r["evals"] if key in e]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                        label=f"{r['label']} {key.split('/', 1)[1]}")  # fmt: skip
        ax.set_xlabel("training compute (GFLOPs)")
        ax.set_ylabel("recognition accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "recognition.png", dpi=110)
        plt.close(fig)
        figures.append(("Recognition accuracy against training compute", "recognition.png"))

    leveled = [r for r in runs if "levels" in r]
    if leveled:  # paper 2: accuracy per difficulty level
        fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(leveled) + 3), 3.8))
        width = 0.8 / len(leveled)
        for i, r in enumerate(leveled):
            values = [r["levels"].get(f"accuracy/{lv}", 0.0) for lv in LEVEL_KEYS]
            ax.bar([j + i * width for j in range(5)], values, width, label=r["label"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(5)], LEVEL_KEYS)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "levels.png", dpi=110)
        plt.close(fig)
        figures.append(("Accuracy per difficulty level (L1 easiest, L5 hardest)", "levels.png"))
        lines += ["## Accuracy per level", "", "| run | " + " | ".join(LEVEL_KEYS) + " | all |",
                  "|---|" + "---|" * 6]  # fmt: skip
        for r in leveled:
            lv = r["levels"]
            cells = [f"{_pct(lv.get(f'accuracy/{k}'))} ({lv.get(f'items/{k}', 0):.0f})" for k in LEVEL_KEYS]
            lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {_pct(lv.get('accuracy'))} |")
        lines += ["", "Items per level in parentheses.", ""]

    for r in [r for r in runs if "sweep" in r]:  # model merging at several ratios
        rows = r["sweep"]["rows"]
        sweep_suites = list(r["sweep"]["config"]["suites"])
        method = r["sweep"]["config"]["method"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for s in sweep_suites:
            ax.plot([x["ratio"] for x in rows], [x.get(f"success/{s}") for x in rows], marker="o", label=s)
        ax.set_xlabel(f"share of the second model ({method})")
        ax.set_ylabel("episode success")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"merge-{Path(r['dir']).name}.png"  # the arm's folder name: safe in a file name and a link
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures.append((f"{r['label']}: success of {method} merges", name))
        lines += [f"## Merges: {r['label']}", "",
                  f"Episode success of {method} merges; ratio = share of the second model (0: the first model).",
                  "", "| ratio | " + " | ".join(sweep_suites) + " |", "|---|" + "---|" * len(sweep_suites)]  # fmt: skip
        lines += [f"| {x['ratio']:.2f} | " + " | ".join(_pct(x.get(f"success/{s}")) for s in sweep_suites) + " |"
                  for x in rows]  # fmt: skip
        lines.append("")

    for r in [r for r in runs if "counts" in r]:
        c = r["counts"]
        lines += [f"Data mixing ({r['label']}): {c['from_rl']} episodes from the RL model, {c['from_sft']} from "
                  f"the SFT model, {c['skipped']} of {c['tasks']} tasks failed by both.", ""]  # fmt: skip

    lines += ["## Figures", ""] + [f"### {caption}\n\n![{caption}]({name})\n" for caption, name in figures]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw = [{k: v for k, v in r.items() if k != "evals"} | {"evals": r.get("evals", [])} for r in runs]
    (out / "report.json").write_text(json.dumps(raw, indent=1, default=float), encoding="utf-8")
    return out / "report.md"
