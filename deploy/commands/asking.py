"""How a model learned to be asked a task: commands that play a trained model ask as it learned.

Options that shape how a task is asked, not which task (the prompt style, the reasoning format): a model
asked in another style than it trained on copies the prompt's examples or rambles, and scores ~0% without
any error. A run's checkpoint carries its run's options; a prepared base, its catalogue entry's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

PROMPT_OPTIONS = ("prompt_style", "reasoning")


def run_prompt_options(model: str, env_id: str) -> dict[str, Any]:
    """How the run that wrote checkpoint folder ``model`` asked ``env_id``'s tasks (its resolved config's
    prompt options); empty for anything else (a prepared model, another environment's run)."""
    from sftrl.config import ConfigError, read_yaml

    folder = Path(model)
    config_file = folder.parent.parent / "resolved_config.yaml"  # <run>/checkpoints/step-N
    if not (folder / "COMPLETE").is_file() or not config_file.is_file():
        return {}
    try:
        env = read_yaml(config_file).get("env") or {}
    except ConfigError:
        return {}
    options = env.get("options") if isinstance(env, dict) and env.get("id") == env_id else None
    return {k: options[k] for k in PROMPT_OPTIONS if k in options} if isinstance(options, dict) else {}


def base_prompt_options(model: str, env_id: str) -> dict[str, Any]:
    """How a prepared base's training data asked ``env_id``'s tasks (``model``: its name or its folder);
    empty for a model the catalogue says nothing about."""
    from sftrl.models import CATALOG, find_prepared
    from sftrl.models.store import read_record

    prepared = find_prepared(model)
    record = prepared.record if prepared is not None else read_record(Path(model))
    entry = CATALOG.get(record.name) if record is not None else None
    return dict(entry.asks.get(env_id, {})) if entry is not None else {}


def trained_prompt_options(model: str, env_id: str) -> dict[str, Any]:
    """How ``model`` learned to be asked ``env_id``'s tasks: its run's options, else its base's."""
    return run_prompt_options(model, env_id) or base_prompt_options(model, env_id)


def ask_as_trained(console: Console, model: str, env_id: str, given: dict[str, Any]) -> dict[str, Any]:
    """``given`` with the prompt options ``model`` learned filled in where not given (said in a dim line)."""
    trained = {k: v for k, v in trained_prompt_options(model, env_id).items() if k not in given}
    if trained:
        shown = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in trained.items())
        console.print(f"[dim]asked as {model} learned: {shown} (an option given here wins)[/]",
                      highlight=False, soft_wrap=True)  # fmt: skip
    return {**trained, **given}
