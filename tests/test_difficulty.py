"""Difficulty levels: paper 2's thresholds, tagging, per-level accuracy, the command on the real stack."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.evaluate.levels import (
    TaggedItem,
    accuracy_by_level,
    level_of,
    read_tagged,
    tag_items,
    write_tagged,
)
from services.rollout.config import SamplingConfig
from sftrl.config import ConfigError

# paper 2, 16 samples: L1 >= 12/16, L2 8..11, L3 5..7, L4 2..4, L5 < 2
PAPER = {**dict.fromkeys(range(12, 17), 1), **dict.fromkeys(range(8, 12), 2), **dict.fromkeys(range(5, 8), 3),
         **dict.fromkeys(range(2, 5), 4), 0: 5, 1: 5}  # fmt: skip


@pytest.mark.parametrize("passes", range(17))
def test_levels_follow_the_papers_thresholds(passes: int) -> None:
    assert level_of(passes, 16) == PAPER[passes]
    assert level_of(2 * passes, 32) == PAPER[passes]  # same fractions for other sample counts


def test_level_of_rejects_impossible_counts() -> None:
    for passes, samples in ((3, 2), (-1, 4), (0, 0)):
        with pytest.raises(ValueError):
            level_of(passes, samples)


class ScriptedRollout:
    """Solves task seed s in exactly ``wins[s]`` of its samples: checks tag_items' bookkeeping. The
    engine path itself is covered by test_difficulty_command_on_the_real_stack below."""

    def __init__(self, wins: dict[int, int]):
        self.wins, self.seen = wins, []

    def play(self, specs, sampling):
        self.seen.extend(specs)
        return [
            SimpleNamespace(success=int(s.episode_id.rsplit("-", 1)[1]) < self.wins[s.seed]) for s in specs
        ]


def test_tagging_counts_passes_per_task() -> None:
    wins = {100: 16, 101: 9, 102: 6, 103: 3, 104: 1}
    rollout = ScriptedRollout(wins)
    tagged = tag_items(rollout, "sftrl/GeneralPoints-v0", {}, items=5, samples=16, seed=100, chunk=7)
    assert [(t.seed, t.passes, t.level) for t in tagged] == [(100, 16, 1), (101, 9, 2), (102, 6, 3), (103, 3, 4),
                                                             (104, 1, 5)]  # fmt: skip
    assert len(rollout.seen) == 80 and len({s.episode_id for s in rollout.seen}) == 80
    with pytest.raises(ConfigError, match="temperature"):
        tag_items(rollout, "sftrl/GeneralPoints-v0", {}, 1, 4, sampling=SamplingConfig(temperature=0))
    report = accuracy_by_level(
        ScriptedRollout({100: 1, 101: 0, 102: 1, 103: 0, 104: 0}), tagged, SamplingConfig()
    )
    assert report == {"accuracy": 0.4, "accuracy/L1": 1.0, "items/L1": 1, "accuracy/L2": 0.0, "items/L2": 1,
                      "accuracy/L3": 1.0, "items/L3": 1, "accuracy/L4": 0.0, "items/L4": 1, "accuracy/L5": 0.0,
                      "items/L5": 1}  # fmt: skip


def test_tagged_sets_round_trip_and_bad_files_are_named(tmp_path: Path) -> None:
    items = [TaggedItem(env_id="sftrl/GeneralPoints-v0", options={"target": 24}, seed=s, samples=4, passes=s % 5,
                        level=level_of(s % 5, 4)) for s in range(5)]  # fmt: skip
    path = write_tagged(items, tmp_path / "levels.jsonl")
    assert read_tagged(path) == items
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text() + '{"env_id": "x", "seed": "not a number"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:6"):
        read_tagged(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no tagged items"):
        read_tagged(tmp_path / "empty.jsonl")


@pytest.mark.slow
def test_difficulty_command_on_the_real_stack(tiny_model: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deploy.cli import main

    levels = tmp_path / "levels.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["difficulty", "--model", str(tiny_model), "--suite", "gp-l/id", "--items", "3",
                                  "--samples", "4", "--max-tokens", "16", "--out", str(levels),
                                  "--verify-iter", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    tagged = read_tagged(levels)
    assert [t.seed for t in tagged] == [20_000, 20_001, 20_002]
    assert all(t.samples == 4 and 0 <= t.passes <= 4 and t.level == level_of(t.passes, 4) for t in tagged)
    assert tagged[0].options["verify_iter"] == 1 and tagged[0].options["face_cards"] == "as_10"
    report = tmp_path / "report.json"
    result = runner.invoke(main, ["difficulty", "--model", str(tiny_model), "--levels", str(levels),
                                  "--max-tokens", "16", "--out", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())["metrics"]
    assert 0 <= metrics["accuracy"] <= 1
    assert sum(v for k, v in metrics.items() if k.startswith("items/")) == 3
    bad = runner.invoke(main, ["difficulty", "--model", str(tiny_model), "--suite", "gp-l/nothing"])
    assert bad.exit_code == 2 and "unknown suite" in bad.output
