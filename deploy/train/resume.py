"""Whether a run folder may be continued or started over: nothing a run wrote is lost by either.

A resume continues the newest checkpoint that verifies, under the config the checkpoints were made
with: the settings they depend on (the model, the seed, the stages with their data, optimizer and
algorithm, the learner's shape, the training env and sampling) must equal the run's
``resolved_config.yaml``; evaluation, checkpointing, logging and the execution settings (threads,
micro-batches, actors) may change. A run that cannot be continued (no checkpoint verifies) is
refused, never silently started again over its metrics and checkpoints; ``restart`` starts it over
after moving its folder aside to ``<run_name>.old-<UTC time>``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from deploy.train.config import TrainConfig
from services.envs import resolve_options
from sftrl.checkpoint import CheckpointManager, verify
from sftrl.config import RESOLVED_CONFIG_NAME

# What the checkpoints (and the exact replay of the remaining steps) depend on, as dotted key
# prefixes of the resolved config; every other key may differ on resume.
CHECKPOINT_KEYS = (
    "model", "seed", "env", "stages", "off_policy", "rollout.sampling",
    "learner.device", "learner.world_size", "learner.zero_stage", "learner.precision", "learner.rl_mini_batches",
)  # fmt: skip
SHOWN = 6  # differing keys named in the message (then "and N more")
_ABSENT = object()


class ResumeRefused(ValueError):
    """The run folder cannot be continued (or started over) as asked without losing what it holds;
    the message says why and what to do (a user error: exit 2, no traceback)."""


def _differing(old: Any, new: Any, key: str) -> Iterator[str]:
    """Dotted keys whose values differ; dicts are compared key by key, lists of equal length item by
    item (``stages.0.optim.lr``), anything else whole."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for name in [*old, *(k for k in new if k not in old)]:
            yield from _differing(
                old.get(name, _ABSENT), new.get(name, _ABSENT), f"{key}.{name}" if key else name
            )
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _differing(a, b, f"{key}.{i}")
    elif old != new:
        yield key


def _lookup(tree: Any, key: str) -> Any:
    for part in key.split("."):
        if isinstance(tree, Mapping):
            tree = tree.get(part, _ABSENT)
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return _ABSENT
    return tree


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The dotted keys the checkpoints depend on (:data:`CHECKPOINT_KEYS`) whose values differ between
    two dumped configs, in the configs' order."""
    return [
        k for k in _differing(old, new, "") if any(k == p or k.startswith(p + ".") for p in CHECKPOINT_KEYS)
    ]


def _shown(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _dumped_resolved(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved config dumped as this version of sftrl dumps it (defaults of keys and env
    options added since filled in), or None where the folder has none."""
    path = run_dir / RESOLVED_CONFIG_NAME
    if not path.is_file():
        return None
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        config = TrainConfig.model_validate(old)
        config.env.options = resolve_options(config.env.id, config.env.options)
    except ValueError:  # a key or an option since removed or renamed: compared as written
        return old
    return config.model_dump(mode="json")


def check_same_config(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to resume ``run_dir``'s checkpoints under a config that differs from the one they were
    made with in what they depend on."""
    old = _dumped_resolved(run_dir)
    if old is None:
        return  # nothing recorded to compare with (a folder not written by `sftrl train`)
    new = config.model_dump(mode="json")
    keys = config_differences(old, new)
    if not keys:
        return
    named = ", ".join(f"{k} ({_shown(_lookup(old, k))} -> {_shown(_lookup(new, k))})" for k in keys[:SHOWN])
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    raise ResumeRefused(
        f"{run_dir}'s checkpoints were made with another config: {named}{more}\n"
        f"resume with the run's own config ({run_dir / RESOLVED_CONFIG_NAME}), or start over with "
        "another run_name / output_dir, or --restart without --resume (the old folder is moved aside)"
    )


def held_data(run_dir: Path) -> list[str]:
    """What starting over in ``run_dir`` would replace: its metrics records and checkpoint folders
    (complete or not), in words; empty when it holds neither (e.g. a run stopped while starting)."""
    from deploy.train.metrics import read_metrics

    held = []
    try:
        records = len(read_metrics(run_dir / "metrics.jsonl"))
    except ValueError:  # damaged in the middle: still the run's record
        records = -1
    if records:
        held.append(f"metrics.jsonl ({records} records)" if records > 0 else "metrics.jsonl (damaged)")
    root = run_dir / "checkpoints"
    entries = sorted(root.iterdir()) if root.is_dir() else []
    if entries:
        held.append(f"checkpoints/ ({len(entries)} entries)")
    return held


def _why_none_verifies(run_dir: Path) -> str:
    """Why no checkpoint of ``run_dir`` can be resumed: none written, or why the newest fails."""
    steps = CheckpointManager(run_dir / "checkpoints").steps()
    if not steps:
        return "it has no complete checkpoint"
    try:
        verify(steps[-1][1])
    except ValueError as exc:
        return f"none of its {len(steps)} checkpoints verifies (the newest: {exc})"
    return f"none of its {len(steps)} checkpoints verifies"


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``<name>.old-<UTC time>`` beside it (one rename: nothing is copied or
    deleted) and return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    run_dir.rename(target)
    return target


def claim_run_folder(
    run_dir: Path,
    config: TrainConfig,
    state: dict[str, Any] | None,
    resume: bool,
    restart: bool,
    console: Console,
) -> int:
    """Make ``run_dir`` ready for this run or refuse (:class:`ResumeRefused`), losing nothing.

    ``state`` is the newest verified checkpoint's (None when none verifies or no resume was asked).
    Returns the global step after which ``metrics.jsonl``'s records are dropped, as they will be
    written again: the checkpoint's, or -1 when the run starts from step 0 (no record is kept then:
    there were none, or the folder was moved aside; a torn line alone goes too)."""
    if state is not None:
        check_same_config(run_dir, config)
        return int(state["global_step"])
    held = held_data(run_dir)
    if held and not restart:
        what = ", ".join(held)
        if resume:
            raise ResumeRefused(
                f"{run_dir} cannot be resumed: {_why_none_verifies(run_dir)}; starting again would replace "
                f"its {what}\nto start over with the old files moved aside, add --restart; or use another run_name / output_dir"
            )
        raise ResumeRefused(
            f"{run_dir} already holds a run ({what})\n"
            "continue it with --resume, start over with --restart (the old folder is moved aside), or use "
            "another run_name / output_dir"
        )
    if held:
        aside = move_aside(run_dir)
        console.print(
            f"[yellow]starting over: the run's old files are kept in {aside}[/]",
            highlight=False,
            soft_wrap=True,
        )
    elif resume and run_dir.exists():
        console.print(
            "[yellow]nothing to resume: no checkpoint and no metrics yet; starting from the beginning[/]"
        )
    return -1
