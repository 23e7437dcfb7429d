"""The typed config layer: YAML + key=value overrides, clear errors, resolved config written."""

from __future__ import annotations

import pytest
import yaml

from sftrl.config import ConfigError, SFTDataConfig, apply_overrides, load_config, write_resolved_config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("episodes: 10\nenv:\n  id: sftrl/GeneralPoints-v0\n  options: {mode: image}\n")
    cfg = load_config(SFTDataConfig, path, ["episodes=20", "env.options.target=12", "formats=[chat]"])
    assert (
        cfg.episodes == 20 and cfg.env.options == {"mode": "image", "target": 12} and cfg.formats == ["chat"]
    )


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["episodes"])
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"episodes": 3}, ["episodes.x=1"])


def test_unknown_and_mistyped_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match="episodez"):
        load_config(SFTDataConfig, None, ["episodez=3"])
    with pytest.raises(ConfigError, match="episodes"):
        load_config(SFTDataConfig, None, ["episodes=many"])


@pytest.mark.parametrize("content", ["a: [1, 2", "- just\n- a list\n"])
def test_malformed_yaml_is_a_config_error(tmp_path, content):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(SFTDataConfig, path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(SFTDataConfig, tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(SFTDataConfig, None, ["episodes=5"])
    path = write_resolved_config(cfg, tmp_path / "run")
    data = yaml.safe_load(path.read_text())
    assert data["episodes"] == 5 and data["revision_fraction"] == 0.3
    assert SFTDataConfig.model_validate(data) == cfg


def test_list_index_overrides():
    data = {"stages": [{"steps": 1}, {"steps": 2}]}
    assert apply_overrides(data, ["stages.1.steps=7"])["stages"] == [{"steps": 1}, {"steps": 7}]
    with pytest.raises(ConfigError, match="index"):
        apply_overrides(data, ["stages.5.steps=7"])
    with pytest.raises(ConfigError, match="index"):
        apply_overrides(data, ["stages.x.steps=7"])


def test_a_section_given_in_part_keeps_its_defaults_other_settings():
    """Evaluation sampling defaults to greedy and SFT stages to lr 1e-4: setting one other key of those
    sections must not bring back the class defaults (T = 1 evaluations, lr 1e-5)."""
    from deploy.train.config import TrainConfig

    stages = "stages=[{kind: sft, optim: {warmup_steps: 0}}, {kind: rl, optim: {scheduler: constant}}]"
    cfg = load_config(TrainConfig, None, ["eval.sampling.max_tokens=64", stages])
    assert (cfg.eval.sampling.temperature, cfg.eval.sampling.max_tokens) == (0.0, 64)
    assert (cfg.stages[0].optim.lr, cfg.stages[0].optim.warmup_steps) == (1e-4, 0)
    assert (cfg.stages[1].optim.lr, cfg.stages[1].optim.scheduler) == (1e-5, "constant")
    given = load_config(TrainConfig, None, ["eval.sampling.temperature=0.7", "eval.sampling.max_tokens=8"])
    assert (given.eval.sampling.temperature, given.eval.sampling.max_tokens) == (0.7, 8)
    untouched = load_config(TrainConfig, None, [])
    assert untouched.eval.sampling == TrainConfig.model_fields["eval"].default.sampling
    # a section whose default sets nothing (EnvSpec()) takes the given keys and the class defaults
    assert SFTDataConfig.model_validate({"env": {"id": "sftrl/GeneralPoints-v0"}}).env.options == {}
