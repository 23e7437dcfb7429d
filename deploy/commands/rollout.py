"""``sftrl rollout``: play episodes with a model, write the trajectories, print what happened."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from services.envs import resolve_options
from services.rollout.config import RolloutConfig
from sftrl.config import StrictModel, write_resolved_config
from sftrl.trajectory import Trajectory, write_trajectories


class RolloutRunConfig(StrictModel):
    env_id: str = "sftrl/GeneralPoints-v0"
    env_options: dict[str, Any] = {}
    episodes: int = 16
    samples_per_task: int = 1
    seed: int = 0
    out: str = "runs/rollout/trajectories.jsonl"
    in_process: bool = False
    ray_address: str | None = None
    rollout: RolloutConfig = RolloutConfig()


def summarize(trajectories: list[Trajectory], seconds: float) -> dict[str, float]:
    n = max(1, len(trajectories))
    tokens = sum(t.num_generated_tokens for t in trajectories)
    return {
        "episodes": len(trajectories),
        "success_rate": sum(t.success for t in trajectories) / n,
        "mean_reward": sum(t.total_reward for t in trajectories) / n,
        "mean_turns": sum(len(t.turns) for t in trajectories) / n,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "seconds": seconds,
    }


def run_rollout(config: RolloutRunConfig, console: Console) -> dict[str, float]:
    from deploy.commands.asking import ask_as_trained
    from deploy.commands.engine import prepare_engine
    from services.rollout.group import episode_specs

    # every mistake in the input fails here, before an engine starts: options, model, context
    asked = ask_as_trained(console, config.rollout.engine.model, config.env_id, config.env_options)
    config.env_options = resolve_options(config.env_id, asked)
    engine, notes = prepare_engine(config.rollout.engine, console, config.rollout.sampling.max_tokens,
                                   prefix="rollout.engine")  # fmt: skip
    config.rollout = config.rollout.model_copy(update={"engine": engine})
    tasks = -(-config.episodes // config.samples_per_task)
    specs = episode_specs(config.env_id, config.env_options, tasks, config.seed, config.samples_per_task)
    specs = specs[: config.episodes]
    out = Path(config.out)
    columns = (TextColumn("episodes"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("episodes", total=len(specs))
        status = console.status("starting the engine...")
        status.start()
        if config.in_process:
            from services.rollout.worker import RolloutWorker

            worker = RolloutWorker(config.rollout)
            status.stop()
            start = time.perf_counter()
            trajectories = []
            for i in range(0, len(specs), 16):
                trajectories += worker.play(specs[i : i + 16])
                progress.advance(bar, len(specs[i : i + 16]))
            worker.shutdown()
        else:
            import ray

            from services.rollout.group import RolloutGroup
            from sftrl.ray_setup import init_ray

            owns_ray = not ray.is_initialized()
            init_ray(config.ray_address)
            try:
                group = RolloutGroup(config.rollout, chunk_size=8)
                status.stop()
                start = time.perf_counter()
                trajectories = group.play(specs, on_chunk=lambda chunk: progress.advance(bar, len(chunk)))
                group.shutdown()
            finally:
                if owns_ray:
                    ray.shutdown()
        seconds = time.perf_counter() - start
    write_trajectories(trajectories, out)
    write_resolved_config(config, out.parent, f"{out.stem}.resolved_config.yaml", notes=notes)
    stats = summarize(trajectories, seconds)
    table = Table(title=f"{config.env_id} with {config.rollout.engine.model}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("episodes", str(stats["episodes"]))
    table.add_row("success rate", f"{stats['success_rate']:.1%}")
    table.add_row("mean reward", f"{stats['mean_reward']:+.3f}")
    table.add_row("mean turns", f"{stats['mean_turns']:.2f}")
    table.add_row("generated tokens/s", f"{stats['tokens_per_s']:,.0f}")
    console.print(table)
    console.print(f"trajectories: {out}", soft_wrap=True)
    return stats
