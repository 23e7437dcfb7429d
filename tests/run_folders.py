"""Run folders as `sftrl train` leaves them, built in seconds from a prepared model (registry tests)."""

from __future__ import annotations

from pathlib import Path


def make_run_folder(run_dir: Path, model: Path, steps: list[int], **config: object) -> list[Path]:
    """A run folder as `sftrl train` leaves it: resolved config, metrics, and verified checkpoints
    holding ``model``'s real weights (loadable by transformers and vLLM)."""
    import json
    import shutil

    from deploy.train.config import TrainConfig
    from sftrl.checkpoint import CheckpointManager, write_complete, write_trainer_state
    from sftrl.config import write_resolved_config

    cfg = TrainConfig.model_validate({"run_name": run_dir.name, "output_dir": str(run_dir.parent),
                                      "model": str(model), **config})  # fmt: skip
    write_resolved_config(cfg, run_dir)
    manager = CheckpointManager(run_dir / "checkpoints", keep=100)
    folders = []
    with (run_dir / "metrics.jsonl").open("a") as fh:
        for i, step in enumerate(steps):
            fh.write(json.dumps({"kind": "eval", "global_step": step, "success/id": step / 1000}) + "\n")

            def writer(target: Path, step: int = step, final: bool = i == len(steps) - 1) -> None:
                shutil.copytree(model, target)
                (target / "COMPLETE").unlink(missing_ok=True)
                write_trainer_state(target, {"extra": {"global_step": step, "stage_index": len(cfg.stages) - 1,
                                                       "stage_step": step, "stage_final": final,
                                                       "stage_name": cfg.stages[-1].name, "flops": 1e9 * step}})  # fmt: skip
                write_complete(target)

            folders.append(Path(manager.save(step, writer)))
    return folders
