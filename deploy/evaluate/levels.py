"""Difficulty levels (paper 2): items tagged L1..L5 by a model's pass rate over k samples, and
accuracy per level for any model on a tagged set.

Thresholds for 16 samples: L1 >= 12 passes, L2 8..11, L3 5..7, L4 2..4, L5 < 2. Other sample counts
use the same fractions (12/16, 8/16, 5/16, 2/16), so 32 samples give L1 >= 24 passes.

A fixed number of items leaves the rare levels nearly empty (a model that solves most items leaves few
in L3-L5); :func:`fill_levels` draws items batch by batch until every level holds the number asked,
and keeps that many of each (the first in seed order), or says which level fell short and why.
"""

from __future__ import annotations

import json
import time
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
from sftrl.files import write_atomic

if TYPE_CHECKING:
    from services.rollout.protocol import Rollout

LEVELS = (1, 2, 3, 4, 5)
# (level, lowest pass fraction) from paper 2's counts out of 16 samples; below the last: L5
LEVEL_FLOORS: tuple[tuple[int, float], ...] = ((1, 12 / 16), (2, 8 / 16), (3, 5 / 16), (4, 2 / 16))
FORMAT = 1
LEVEL_FILL_FILE = "levels-fill.json"  # beside a study seed's levels.jsonl: what filling the levels took
LEVEL_SPEC_FILE = "levels-spec.json"  # beside it: the settings the items were tagged with


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


class LevelFill(StrictModel):
    """What filling the levels took: items drawn and tagged, episodes played, seconds, the levels of
    every drawn item, how many of each were kept, and any level left short."""

    per_level: int
    drawn: int
    episodes: int
    seconds: float
    drawn_levels: dict[str, int]
    kept: dict[str, int]
    short: list[str] = []

    def shortfall(self, most: str = "levels.max_items", asked: str = "levels.per_level") -> str:
        """Why a level is short, in words ("" when every level is filled); ``most`` and ``asked`` name
        the two settings as the caller's user knows them (a recipe's keys, a command's options)."""
        if not self.short:
            return ""
        have = ", ".join(f"{name} {self.kept[name]}" for name in self.short)
        return (f"after tagging {self.drawn} items ({self.episodes} episodes, {self.seconds:.0f} s) "
                f"{', '.join(self.short)} hold fewer than the {self.per_level} items asked ({have}): the "
                f"model's pass rates rarely fall there. Raise {most} or lower {asked}.")  # fmt: skip


def fill_levels(
    rollout: Rollout,
    env_id: str,
    options: dict[str, Any],
    per_level: int,
    samples: int = 16,
    seed: int = 20_000,
    sampling: SamplingConfig | None = None,
    batch: int = 256,
    max_items: int = 4096,
    model_name: str = "",
    on_progress: Callable[[int, dict[str, int]], None] | None = None,
) -> tuple[list[TaggedItem], LevelFill]:
    """Tag items ``seed``, ``seed + 1``, ... in batches of ``batch`` until every level holds
    ``per_level`` of them or ``max_items`` were drawn; keep the first ``per_level`` of each level (all
    of a short level). ``on_progress(drawn, counts)`` after each batch."""
    if per_level < 1 or batch < 1 or max_items < 1:
        raise ConfigError("per_level, batch and max_items must be at least 1")
    started, tagged = time.perf_counter(), []
    while len(tagged) < max_items and min(level_counts(tagged).values()) < per_level:
        size = min(batch, max_items - len(tagged))
        tagged += tag_items(rollout, env_id, options, size, samples, seed + len(tagged), sampling, model_name)
        if on_progress is not None:
            on_progress(len(tagged), level_counts(tagged))
    kept = [item for level in LEVELS for item in [t for t in tagged if t.level == level][:per_level]]
    kept.sort(key=lambda item: item.seed)
    counts = level_counts(kept)
    fill = LevelFill(per_level=per_level, drawn=len(tagged), episodes=len(tagged) * samples,
                     seconds=round(time.perf_counter() - started, 1), drawn_levels=level_counts(tagged),
                     kept=counts, short=[name for name, n in counts.items() if n < per_level])  # fmt: skip
    return kept, fill


def accuracy_by_level(
    rollout: Rollout,
    tagged: Sequence[TaggedItem],
    sampling: SamplingConfig,
    chunk: int = 64,
    on_progress: Callable[[int], None] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Episode success of ``rollout`` on the tagged items: overall and per level (``accuracy/L3``...).
    ``options`` go over each item's (how the model is asked to answer, e.g. with reasoning; never the
    task: the items' own seeds and rules stay)."""
    specs = [
        EpisodeSpec(
            f"level-{t.env_id.split('/')[-1]}-s{t.seed}-0",
            t.env_id,
            {**t.options, **(options or {})},
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


def _write_text(path: Path, text: str) -> Path:
    return write_atomic(path, text)


def write_tagged(items: Sequence[TaggedItem], path: str | Path) -> Path:
    return _write_text(Path(path), "".join(item.model_dump_json() + "\n" for item in items))


def write_fill(fill: LevelFill, path: str | Path) -> Path:
    return _write_text(Path(path), fill.model_dump_json(indent=1) + "\n")


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
