"""Difficulty levels (paper 2): items tagged L1..L5 by a model's pass rate over k samples, and
accuracy per level for any model on a tagged set.

Thresholds for 16 samples: L1 >= 12 passes, L2 8..11, L3 5..7, L4 2..4, L5 < 2. Other sample counts
use the same fractions (12/16, 8/16, 5/16, 2/16), so 32 samples give L1 >= 24 passes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from deploy.evaluate.suites import play_in_chunks
from services.rollout.config import SamplingConfig
from services.rollout.env_pool import EpisodeSpec
from services.rollout.group import episode_specs
from sftrl.config import ConfigError, StrictModel

if TYPE_CHECKING:
    from services.rollout.protocol import Rollout

LEVELS = (1, 2, 3, 4, 5)
# (level, lowest pass fraction) from paper 2's counts out of 16 samples; below the last: L5
LEVEL_FLOORS: tuple[tuple[int, float], ...] = ((1, 12 / 16), (2, 8 / 16), (3, 5 / 16), (4, 2 / 16))
FORMAT = 1


def level_of(passes: int, samples: int) -> int:
    """The level (1 easiest .. 5 hardest) of an item that ``passes`` of ``samples`` attempts solved."""
    if samples < 1 or not 0 <= passes <= samples:
        raise ValueError(f"need 0 <= passes <= samples and samples >= 1 (got {passes}/{samples})")
    for level, floor in LEVEL_FLOORS:
        if passes >= floor * samples - 1e-9:
            return level
    return 5


class TaggedItem(StrictModel):
    """One task (environment, options, seed) and its measured difficulty."""

    format: int = FORMAT
    env_id: str
    options: dict[str, Any]
    seed: int
    samples: int = Field(ge=1)
    passes: int = Field(ge=0)
    level: int = Field(ge=1, le=5)
    tagged_by: str = ""


def tag_items(
    rollout: Rollout,
    env_id: str,
    options: dict[str, Any],
    items: int,
    samples: int = 16,
    seed: int = 20_000,
    sampling: SamplingConfig | None = None,
    model_name: str = "",
    chunk: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> list[TaggedItem]:
    """Play each of ``items`` tasks ``samples`` times (stochastic sampling) and tag its level."""
    sampling = sampling or SamplingConfig(temperature=1.0, max_tokens=256)
    if sampling.temperature == 0 and samples > 1:
        raise ConfigError("pass rates over several samples need temperature > 0")
    specs = episode_specs(env_id, options, items, seed=seed, samples_per_task=samples)
    passes: dict[int, int] = defaultdict(int)
    for spec, traj in zip(specs, play_in_chunks(rollout, specs, sampling, chunk, on_progress), strict=True):
        passes[spec.seed] += bool(traj.success)
    return [
        TaggedItem(
            env_id=env_id,
            options=options,
            seed=s,
            samples=samples,
            passes=passes[s],
            level=level_of(passes[s], samples),
            tagged_by=model_name,
        )  # fmt: skip
        for s in range(seed, seed + items)
    ]


def accuracy_by_level(
    rollout: Rollout,
    tagged: Sequence[TaggedItem],
    sampling: SamplingConfig,
    chunk: int = 64,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Episode success of ``rollout`` on the tagged items: overall and per level (``accuracy/L3``...)."""
    specs = [
        EpisodeSpec(
            f"level-{t.env_id.split('/')[-1]}-s{t.seed}-0",
            t.env_id,
            dict(t.options),
            t.seed,
            f"level-s{t.seed}",
        )  # fmt: skip
        for t in tagged
    ]
    by_level: dict[int, list[bool]] = defaultdict(list)
    for item, traj in zip(tagged, play_in_chunks(rollout, specs, sampling, chunk, on_progress), strict=True):
        by_level[item.level].append(bool(traj.success))
    out: dict[str, float] = {"accuracy": sum(sum(v) for v in by_level.values()) / max(1, len(tagged))}
    for level in LEVELS:
        if by_level[level]:
            out[f"accuracy/L{level}"] = sum(by_level[level]) / len(by_level[level])
            out[f"items/L{level}"] = len(by_level[level])
    return out


def write_tagged(items: Sequence[TaggedItem], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(item.model_dump_json() + "\n" for item in items), encoding="utf-8")
    tmp.replace(path)
    return path


def read_tagged(path: str | Path) -> list[TaggedItem]:
    """A tagged set written by :func:`write_tagged`; a clear error names the first bad line."""
    from pydantic import ValidationError

    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read tagged set {path}: {exc.strerror or exc}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(TaggedItem.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ConfigError(f"{path}:{number} is not a tagged item: {str(exc).splitlines()[0]}") from None
    if not items:
        raise ConfigError(f"{path} holds no tagged items")
    return items


def level_counts(items: Sequence[TaggedItem]) -> dict[str, int]:
    return {f"L{level}": sum(1 for i in items if i.level == level) for level in LEVELS}
