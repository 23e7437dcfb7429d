"""Metrics of a run: one JSON line per record, TensorBoard scalars, and the curves as a PNG."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from sftrl.files import fsync_path, write_atomic


class MetricsLog:
    """Appends records to ``metrics.jsonl`` (the source of truth) and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, truncate_after_step: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        run_dir.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # Resuming: records written after the checkpoint belong to a future that is replayed.
            kept = [r for r in read_metrics(self.path) if r.get("global_step", 0) <= truncate_after_step]
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))  # old or new, whole
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
        if self._writer is not None:
            step = int(record.get("global_step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)
            self._writer.flush()

    def log_evaluation(
        self, at: dict[str, Any], metrics: dict[str, float], played: dict[str, list[Any]]
    ) -> None:
        """An evaluation's record (``at``: its stage, steps, compute and time; then its metrics), and after
        it an ``episodes`` record: each suite's per-episode outcomes, for differences paired by task, with
        the commit and CPU that played them."""
        from deploy.evaluate.metrics import episode_outcomes
        from sftrl.provenance import provenance

        self.log({"kind": "eval", **at, **metrics})
        outcomes = {name: episode_outcomes(trajs) for name, trajs in played.items()}
        self.log({"kind": "episodes", **{k: at[k] for k in ("stage", "stage_step", "global_step") if k in at},
                  **provenance(), "suites": outcomes})  # fmt: skip

    def sync(self) -> None:
        """Put every record logged so far on disk (each :meth:`log` closes the file, so nothing is left
        in a buffer): the file's data, and the folder's entry for it. Called before each checkpoint."""
        if self.path.exists():
            fsync_path(self.path)
        fsync_path(self.path.parent)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A torn last line (the process died mid-write) is dropped with
    a warning; a bad line anywhere else is corruption and an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: dropped a torn last line (a write cut short)", stacklevel=2)
                break
            raise ValueError(f"{path}, line {number}: not a JSON record (the file is corrupt)") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: not a JSON object")
        records.append(record)
    return records


def plot_run(run_dir: Path) -> Path | None:
    """Training curves and ID/OOD success against training compute, in the style of paper 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for stage in dict.fromkeys(r["stage"] for r in train):
        rows = [r for r in train if r["stage"] == stage]
        key = "loss" if "loss" in rows[0] else "mean_reward"
        axes[0].plot([r["global_step"] for r in rows], [r.get(key) for r in rows], label=f"{stage}: {key}")
    axes[0].set_xlabel("step")
    axes[0].set_title("training")
    axes[0].legend()
    suites = sorted({k.removeprefix("success/") for r in evals for k in r if k.startswith("success/")})
    for suite in suites:
        played = [r for r in evals if f"success/{suite}" in r]  # a suite kept for the ends skips some
        rates = [r[f"success/{suite}"] for r in played]
        axes[1].plot([r["global_step"] for r in played], rates, marker="o", label=suite)
        axes[2].plot([r.get("flops", 0) / 1e9 for r in played], rates, marker="o", label=suite)
    axes[1].set_xlabel("step")
    axes[1].set_title("episode success")
    axes[2].set_xlabel("training compute (GFLOPs)")
    axes[2].set_title("success vs compute")
    for ax in axes[1:]:
        ax.set_ylim(-0.02, 1.02)
        if suites:
            ax.legend()
    boundaries = [r["global_step"] for r in records if r.get("kind") == "stage_start"]
    for b in boundaries[1:]:
        for ax in axes[:2]:
            ax.axvline(b, color="grey", linestyle=":", linewidth=1)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
