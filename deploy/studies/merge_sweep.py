"""``sftrl merge-sweep``: merge two models at several ratios and evaluate every merge on ID/OOD suites.

One vLLM engine serves the whole sweep: it starts on the first merge and every later merge is loaded
into it in place (the rollout service's weight update), so a sweep costs one engine start. Ratios
whose results are known already (a study passes an end point's own evaluation) are not played. Writes
``sweep.json`` (config, one row per ratio) and ``sweep.png`` (success per suite against the ratio).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from deploy.evaluate.metrics import episode_outcomes
from deploy.evaluate.suites import evaluate
from services.rollout.config import EngineConfig, SamplingConfig
from sftrl.config import EnvSpec, StrictModel, write_resolved_config
from sftrl.files import write_atomic
from sftrl.models.merge import MergeSpec, merge_models
from sftrl.provenance import provenance


class MergeSweepConfig(StrictModel):
    method: Literal["linear", "slerp", "ties"] = "linear"
    models: list[str] = Field(min_length=2, max_length=2, description="A (ratio 0) and B (ratio 1)")
    base: str | None = Field(None, description="ties: the model both task vectors are taken from")
    density: float = Field(0.5, gt=0.0, le=1.0, description="ties: share of each task vector kept")
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    env: EnvSpec = EnvSpec()
    suites: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"id": {}, "ood_rule": {"face_cards": "as_11_12_13"}}, min_length=1
    )
    episodes: int = Field(32, ge=1)
    seed: int = 10_000
    sampling: SamplingConfig = SamplingConfig(temperature=0.0, max_tokens=256)
    engine: EngineConfig = EngineConfig()
    keep_models: bool = Field(False, description="keep every merged folder (default: only the results)")

    @field_validator("ratios")
    @classmethod
    def _in_unit_interval(cls, ratios: list[float]) -> list[float]:
        bad = [r for r in ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"ratios are B's share and must lie in [0, 1] (got {bad})")
        return sorted(dict.fromkeys(ratios))

    @model_validator(mode="after")
    def _ties_has_a_base(self) -> MergeSweepConfig:
        if (self.method == "ties") != (self.base is not None):
            raise ValueError(
                "ties needs base (the model the task vectors are taken from); only ties takes one"
            )
        return self

    def merge_spec(self, ratio: float) -> MergeSpec:
        if self.method == "slerp":
            return MergeSpec(method="slerp", models=self.models, t=ratio)
        if self.method == "ties":
            return MergeSpec(method="ties", models=self.models, weights=[1.0 - ratio, ratio], base=self.base,
                             density=self.density)  # fmt: skip
        return MergeSpec(method="linear", models=self.models, weights=[1.0 - ratio, ratio])


def run_sweep(
    config: MergeSweepConfig,
    out_dir: str | Path,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    known: Mapping[float, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Merge at every ratio, evaluate, and write ``sweep.json`` and ``sweep.png`` into ``out_dir``.

    ``known``: rows already measured (ratio -> metrics), e.g. an end point that is a model whose
    evaluation in the same suites exists; those ratios are neither merged nor played."""
    from services.rollout.worker import RolloutWorker

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    write_resolved_config(config, out)
    worker: RolloutWorker | None = None
    rows: list[dict[str, Any]] = []
    try:
        for ratio in config.ratios:
            if known and ratio in known:
                row = {"ratio": ratio, **known[ratio]}
            else:
                folder = merge_models(config.merge_spec(ratio), out / f"merge-{ratio:.3f}", overwrite=True)
                if worker is None:
                    worker = RolloutWorker.on_model(str(folder), config.engine)
                else:
                    worker.update_weights(str(folder))
                metrics, played = evaluate(
                    worker, config.env.id, config.env.options, config.suites, config.episodes, config.seed,
                    config.sampling,
                )  # fmt: skip
                outcomes = {
                    "suites": {name: episode_outcomes(t) for name, t in played.items()},
                    **provenance(),
                }
                row = {"ratio": ratio, **metrics, "outcomes": outcomes}
                if not config.keep_models:
                    shutil.rmtree(folder, ignore_errors=True)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    finally:
        if worker is not None:
            worker.shutdown()
    result = {"config": config.model_dump(mode="json"), "rows": rows}
    write_atomic(out / "sweep.json", json.dumps(result, indent=1))
    result["plot"] = str(plot_sweep(rows, list(config.suites), config, out / "sweep.png"))
    return result


def plot_sweep(rows: list[dict[str, Any]], suites: list[str], config: MergeSweepConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for suite in suites:
        ax.plot(
            [r["ratio"] for r in rows], [r.get(f"success/{suite}") for r in rows], marker="o", label=suite
        )
    a, b = (Path(m).name for m in config.models)
    ax.set_xlabel(f"share of {b} ({config.method}; 0 = {a})")
    ax.set_ylabel("episode success")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title(f"{config.method} merges of {a} and {b}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
