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
