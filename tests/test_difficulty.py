"""Difficulty levels: paper 2's thresholds, tagging, per-level accuracy, the command on the real stack."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from deploy.evaluate.levels import (
    LEVELS,
    TaggedItem,
    accuracy_by_level,
    fill_levels,
    level_counts,
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


# passes out of 16 per task, cycling every 10 seeds: L1 x3, L2 x2, L5 x2, L4 x2 and one L3
CYCLE = [16, 12, 13, 9, 8, 1, 0, 3, 2, 6]


def test_levels_fill_until_each_holds_the_number_asked_and_keep_that_many() -> None:
    wins = {100 + k: CYCLE[k % 10] for k in range(200)}
    reported = []
    kept, fill = fill_levels(ScriptedRollout(wins), "sftrl/GeneralPoints-v0", {}, per_level=4, samples=16,
                             seed=100, batch=10, on_progress=lambda n, c: reported.append((n, c["L3"])))  # fmt: skip
    # L3 is one item in ten: 4 of them take 40 items, in 4 batches of 10
    assert reported == [(10, 1), (20, 2), (30, 3), (40, 4)]
    assert (fill.drawn, fill.episodes, fill.short, fill.shortfall()) == (40, 640, [], "")
    assert fill.drawn_levels == {"L1": 12, "L2": 8, "L3": 4, "L4": 8, "L5": 8}
    assert fill.kept == level_counts(kept) == {f"L{k}": 4 for k in LEVELS}
    # the first 4 of each level in seed order, listed in seed order
    want = sorted([s for s in range(100, 140) if level_of(wins[s], 16) == lv][:4] for lv in LEVELS)
    assert [t.seed for t in kept] == sorted(s for group in want for s in group)
    assert all(t.passes == wins[t.seed] and t.level == level_of(t.passes, 16) for t in kept)


def test_a_level_left_short_is_said_with_what_it_took() -> None:
    wins = {100 + k: CYCLE[k % 10] for k in range(30)}
    kept, fill = fill_levels(ScriptedRollout(wins), "sftrl/GeneralPoints-v0", {}, per_level=3, samples=16,
                             seed=100, batch=8, max_items=25)  # fmt: skip
    assert fill.drawn == 25 and fill.short == ["L3"] and fill.kept["L3"] == 2 and len(kept) == 4 * 3 + 2
    said = fill.shortfall()
    assert said.startswith("after tagging 25 items (400 episodes, ") and "L3 hold fewer than the 3" in said
    assert "max_items" in said and "per_level" in said
    with pytest.raises(ConfigError, match="at least 1"):
        fill_levels(ScriptedRollout(wins), "sftrl/GeneralPoints-v0", {}, per_level=0)


def test_a_runs_checkpoint_is_asked_as_its_run_asked(tmp_path: Path) -> None:
    from deploy.commands.asking import run_prompt_options

    step = tmp_path / "run" / "checkpoints" / "step-000010"
    step.mkdir(parents=True)
    (tmp_path / "run" / "resolved_config.yaml").write_text(
        "env: {id: sftrl/GeneralPoints-v0, options: {prompt_style: compact, reasoning: long, face_cards: as_10}}\n"
    )
    assert run_prompt_options(str(step), "sftrl/GeneralPoints-v0") == {}  # not a complete checkpoint
    (step / "COMPLETE").write_text("{}")
    gp = "sftrl/GeneralPoints-v0"
    assert run_prompt_options(str(step), gp) == {"prompt_style": "compact", "reasoning": "long"}
    assert run_prompt_options(str(step), "sftrl/VIRL-v0") == {}  # another environment's: nothing carried
    assert run_prompt_options("gp-base", "sftrl/GeneralPoints-v0") == {}  # a prepared model's name
    (tmp_path / "run" / "resolved_config.yaml").write_text("env: [not, a, mapping\n")
    assert run_prompt_options(str(step), "sftrl/GeneralPoints-v0") == {}  # unreadable: the suite's defaults


def test_a_prepared_base_is_asked_as_its_data_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by name or by folder; the record's name picks the catalogue entry; an option given wins."""
    from rich.console import Console

    from deploy.commands.asking import ask_as_trained, trained_prompt_options
    from sftrl.models.store import ModelRecord, write_record

    monkeypatch.setenv("SFTRL_MODELS_DIR", str(tmp_path))
    gp, virl = "sftrl/GeneralPoints-v0", "sftrl/VIRL-v0"
    assert trained_prompt_options("gp-base", gp) == {}  # not prepared here: nothing known
    folder = tmp_path / "gp-base"
    folder.mkdir()
    write_record(folder, ModelRecord(name="gp-base", kind="text", source="test", created="2026-12-07T00:00:00+00:00",
                                     parameters=1, weights_sha256="0" * 64, architecture="LlamaForCausalLM",
                                     dtype="float32", vocab_size=8, max_position_embeddings=64))  # fmt: skip
    assert trained_prompt_options("gp-base", gp) == {"prompt_style": "compact"}
    assert trained_prompt_options(str(folder), gp) == {"prompt_style": "compact"}
    assert trained_prompt_options("gp-base", virl) == {}  # another environment: its defaults
    console = Console(record=True, width=200)
    assert ask_as_trained(console, "gp-base", gp, {"target": 24}) == {"prompt_style": "compact", "target": 24}
    assert "asked as gp-base learned: --prompt-style compact" in console.export_text()
    assert ask_as_trained(console, "gp-base", gp, {"prompt_style": "diverse"}) == {"prompt_style": "diverse"}


def test_the_catalogue_asks_as_each_base_was_built() -> None:
    """The catalogue's prompt style is the builders' own default (one would drift from the other)."""
    from deploy.models.gp_base import GPBaseConfig
    from deploy.models.gp_vl_base import GPVLBaseConfig
    from deploy.models.virl_base import VIRLBaseConfig
    from sftrl.models import CATALOG

    for name, config in (("gp-base", GPBaseConfig()), ("virl-base", VIRLBaseConfig()),
                         ("gp-vl-base", GPVLBaseConfig())):  # fmt: skip
        (options,) = CATALOG[name].asks.values()
        assert options == {"prompt_style": config.prompt_style}, name


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
    from tests.run_folders import make_run_folder

    levels = tmp_path / "levels.jsonl"
    runner = CliRunner()
    # a checkpoint of a run that asked its tasks in the compact style is asked them so here too
    env = {"id": "sftrl/GeneralPoints-v0", "options": {"prompt_style": "compact", "target": 24}}
    (checkpoint,) = make_run_folder(tmp_path / "run", tiny_model, [1], env=env)
    # drawing until every level holds one item, at most 3 drawn: the levels it could not fill are said
    # (plain tagging of a fixed number of items runs in the study end-to-end test)
    result = runner.invoke(main, ["difficulty", "--model", str(checkpoint), "--suite", "gp-l/id", "--items", "3",
                                  "--per-level", "1", "--samples", "4", "--max-tokens", "16", "--out", str(levels),
                                  "--verify-iter", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    tagged = read_tagged(levels)
    assert {t.seed for t in tagged} <= {20_000, 20_001, 20_002} and tagged
    assert all(t.samples == 4 and 0 <= t.passes <= 4 and t.level == level_of(t.passes, 4) for t in tagged)
    assert all(n <= 1 for n in level_counts(tagged).values())
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "hold fewer than the 1 items asked" in said and "--items" in said
    assert tagged[0].options["verify_iter"] == 1 and tagged[0].options["face_cards"] == "as_10"
    assert tagged[0].options["prompt_style"] == "compact" and "--prompt-style compact" in said
    report = tmp_path / "report.json"
    result = runner.invoke(main, ["difficulty", "--model", str(tiny_model), "--levels", str(levels),
                                  "--max-tokens", "16", "--out", str(report)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(report.read_text())["metrics"]
    assert 0 <= metrics["accuracy"] <= 1
    assert sum(v for k, v in metrics.items() if k.startswith("items/")) == len(tagged)
    bad = runner.invoke(main, ["difficulty", "--model", str(tiny_model), "--suite", "gp-l/nothing"])
    assert bad.exit_code == 2 and "unknown suite" in bad.output
