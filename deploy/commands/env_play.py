"""``sftrl env play``: a person plays one episode in the terminal."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.panel import Panel

import services.envs


def _save_image(image: Any, path: Path, console: Console) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    console.print(f"[dim]image saved to[/] {path}")


def play_episode(
    env_id: str, options: dict[str, Any], seed: int | None, image_out: Path | None, console: Console
) -> float:
    """Run the read-answer-score loop until the episode ends; returns the episode's total reward."""
    env = services.envs.make(env_id, **options)
    image_path = image_out or Path(f"sftrl-{env_id.split('/')[-1]}.png")
    obs, info = env.reset(seed=seed)
    total, last_image = 0.0, None
    console.print(
        f"[bold]{env_id}[/] {options or ''}  (type ':hint' for the expert's answer, ':quit' to stop)"
    )
    while True:
        console.print(Panel(obs["text"], title="prompt", title_align="left"))
        if obs["image"] is not None and obs["image"] is not last_image:
            _save_image(obs["image"], image_path, console)
            last_image = obs["image"]
        console.print("[bold cyan]your answer>[/] ", end="")
        line = sys.stdin.readline()
        if not line or line.strip() == ":quit":
            console.print("bye")
            break
        answer = line.rstrip("\n")
        if answer.strip() == ":hint":
            console.print(
                f"[yellow]expert:[/] {env.unwrapped.expert_answer()}", highlight=False, soft_wrap=True
            )
            continue
        obs, reward, terminated, truncated, info = env.step(answer)
        total += float(reward)
        colour = "green" if reward > 0 else "red"
        console.print(f"[{colour}]reward {reward:+g}[/]  errors: {list(info.get('errors', ())) or 'none'}")
        if terminated or truncated:
            verdict = "[bold green]solved[/]" if info.get("success") else "[bold red]failed[/]"
            console.print(f"{verdict} — {info.get('feedback', '')}  total reward {total:+g}", highlight=False)
            break
    env.close()
    return total
