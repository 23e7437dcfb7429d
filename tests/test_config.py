"""The typed config layer: YAML + key=value overrides, clear errors, resolved config written."""

from __future__ import annotations

import json

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


# -- an engine's context follows its model ------------------------------------------------------------


def _model_folder(tmp_path, name: str = "m", **config) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    return str(folder)


def test_the_engine_context_defaults_to_the_models_own(tmp_path):
    from services.rollout.config import EngineConfig
    from services.rollout.context import fit_engine

    assert EngineConfig().max_model_len is None  # no fixed default: it would exceed small models
    model = _model_folder(tmp_path, max_position_embeddings=1024)
    assert fit_engine(EngineConfig(model=model)).max_model_len == 1024
    assert fit_engine(EngineConfig(model=model, max_model_len=512)).max_model_len == 512  # less is fine
    with pytest.raises(
        ConfigError, match=r"max_model_len 4096 is longer than the context of model .*1024 tokens"
    ):
        fit_engine(EngineConfig(model=model, max_model_len=4096))
    with pytest.raises(ConfigError, match="answers of up to 1024 tokens leave no room for a prompt"):
        fit_engine(EngineConfig(model=model), max_tokens=1024)


@pytest.mark.parametrize(
    ("config", "tokens", "source"),
    [
        ({"max_position_embeddings": 8192}, 8192, "max_position_embeddings"),
        ({"n_positions": 1024}, 1024, "n_positions"),  # GPT-2
        ({"max_position_embeddings": 4096, "seq_length": 2048}, 2048, "seq_length"),  # the smallest wins
        ({"text_config": {"max_position_embeddings": 4096}, "vision_config": {}}, 4096,
         "text_config.max_position_embeddings"),  # a VLM: its language model's
        ({"max_position_embeddings": 4096, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, 8192,
         "max_position_embeddings"),  # as vLLM scales it
        ({"max_position_embeddings": 8192, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 8192,
         "max_position_embeddings"),  # already scaled
        ({}, 2048, "no length in its config.json: vLLM's default"),
    ],
)  # fmt: skip
def test_a_models_context_is_read_as_vllm_reads_it(config, tokens, source):
    from services.rollout.context import context_of

    assert context_of(config) == (tokens, source)


def test_unknown_models_are_named_with_what_to_do(tmp_path, monkeypatch):
    from services.rollout.context import model_context

    monkeypatch.setenv("SFTRL_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SFTRL_MODELS_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network lookups in tests
    with pytest.raises(ConfigError, match=r"unknown model 'no-such-model'.*\n.*sftrl models prepare"):
        model_context("no-such-model")
    with pytest.raises(ConfigError, match=r"'gp-base' is not prepared .*sftrl models prepare gp-base"):
        model_context("gp-base")
    with pytest.raises(ConfigError, match="does not exist"):
        model_context(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no config.json"):
        model_context(str(tmp_path))
