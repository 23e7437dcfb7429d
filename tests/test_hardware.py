"""Precision follows the hardware, in one vocabulary (float32, bfloat16, float16; the old fp32/bf16 read
as these) resolved by one function: ``auto`` is bfloat16 only where the CPU computes it natively
(AVX-512 BF16 or AMX), float32 elsewhere; asking for bfloat16 on a CPU without it works but warns once. The CPU's
flags are faked here (this machine has one kind of CPU; the test needs both)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from sftrl import hardware

AVX2_ONLY = ("AMD EPYC 7B13", frozenset({"sse2", "avx", "avx2", "fma"}))
AVX512_BF16 = ("AMD EPYC 9B14", frozenset({"avx2", "avx512f", "avx512_bf16"}))
AMX = (
    "Intel(R) Xeon(R) Platinum 8481C",
    frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}),
)


@pytest.fixture
def cpu(monkeypatch):
    def use(kind: tuple[str, frozenset[str]]) -> None:
        monkeypatch.setattr(hardware, "_cpuinfo", lambda: kind)
        hardware._warn_emulated.cache_clear()

    return use


@pytest.mark.parametrize(("kind", "precision"), [(AVX2_ONLY, "float32"), (AVX512_BF16, "bfloat16"),
                                                (AMX, "bfloat16")])  # fmt: skip
def test_auto_follows_the_cpu_flags(cpu, kind, precision):
    cpu(kind)
    got, why = hardware.resolve_precision("auto", "cpu")
    assert got == precision and why.startswith("auto: ")
    assert ("natively" in why) == (precision == "bfloat16") and ("emulated" in why) == (
        precision == "float32"
    )
    assert hardware.cpu_facts()["native_bf16"] == (precision == "bfloat16")
    assert not hasattr(hardware, "resolve_dtype")  # one function resolves the learner's and the engine's


def test_bf16_asked_for_on_a_cpu_without_it_is_obeyed_with_one_warning(cpu):
    cpu(AVX2_ONLY)
    with pytest.warns(UserWarning, match="emulated on this CPU.*4x"):
        assert hardware.resolve_precision("bfloat16", "cpu") == ("bfloat16", "set in the config")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: a second ask is silent
        assert hardware.resolve_precision("bf16", "cpu")[0] == "bfloat16"  # the old spelling, the same
        assert hardware.resolve_precision("float16", "cpu")[0] == "float16"  # explicit choices stand
        cpu(AMX)
        assert hardware.resolve_precision("bfloat16", "cpu")[0] == "bfloat16"  # native: no warning
        assert hardware.resolve_precision("fp32", "cpu") == ("float32", "set in the config")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        hardware.resolve_precision("fp8", "cpu")


def test_old_spellings_in_configs_are_read_in_the_one_vocabulary(tmp_path):
    """Configs written before the vocabulary was one (learner fp32/bf16) keep working, normalised."""
    from services.learner.config import LearnerConfig
    from services.learner.ds_config import deepspeed_config
    from services.rollout.config import EngineConfig
    from sftrl.config import ConfigError, load_config

    assert LearnerConfig(precision="fp32").precision == "float32"
    assert LearnerConfig.model_validate({"precision": "bf16"}).precision == "bfloat16"
    assert EngineConfig(dtype="bf16").dtype == "bfloat16" and EngineConfig(dtype="fp16").dtype == "float16"
    assert deepspeed_config(LearnerConfig(precision="bf16"), 1)["bf16"]["enabled"]
    assert not deepspeed_config(LearnerConfig(precision="float32"), 1)["bf16"]["enabled"]
    old = tmp_path / "old.yaml"
    old.write_text("learner: {precision: bf16}\nrollout: {engine: {dtype: float32}}\n")
    from deploy.train.config import TrainConfig

    config = load_config(TrainConfig, old)
    assert (config.learner.precision, config.rollout.engine.dtype) == ("bfloat16", "float32")
    with pytest.raises(ConfigError, match="learner.precision"):  # the learner has no float16 path
        load_config(TrainConfig, None, ["learner.precision=float16"])


def test_shipped_configs_use_valid_precisions():
    """Every precision and dtype the shipped YAML names is one the configs take."""
    import re

    from services.learner.config import LearnerConfig
    from services.rollout.config import EngineConfig

    configs = Path(__file__).resolve().parents[1] / "deploy" / "configs"
    found = []
    for path in configs.rglob("*.yaml"):
        for key, value in re.findall(r"\b(precision|dtype):\s*([\w$]+)", path.read_text()):
            if not value.startswith("$"):  # a study's size variable, itself checked here
                found.append((path.name, key, value))
                if key == "precision":
                    LearnerConfig(precision=value)
                else:
                    EngineConfig(dtype=value)
    assert found


def test_a_run_writes_the_choice_and_its_reason_into_its_resolved_config(cpu, tmp_path):
    import yaml
    from rich.console import Console

    from deploy.train.config import TrainConfig, resolve_hardware
    from sftrl.config import write_resolved_config

    cpu(AVX2_ONLY)
    config = TrainConfig()
    assert (config.learner.precision, config.rollout.engine.dtype) == ("auto", "auto")  # the defaults
    console = Console(record=True, width=200)
    notes = resolve_hardware(config, console.print)
    assert (config.learner.precision, config.rollout.engine.dtype) == ("float32", "float32")
    path = write_resolved_config(config, tmp_path, notes=notes)
    text = path.read_text()
    assert text.startswith("# learner.precision: float32 (auto: the CPU has no AVX-512 BF16 or AMX")
    assert yaml.safe_load(text)["learner"]["precision"] == "float32"  # comments do not change the config
    logged = console.export_text()
    # said once, for both (they agree): the choice and its reason
    assert logged.count("precision: float32 (auto: the CPU has no AVX-512 BF16 or AMX") == 1, logged


@pytest.mark.parametrize(("kind", "name"), [(AVX2_ONLY, "amd-epyc-avx2"), (AVX512_BF16, "amd-epyc-avx512-bf16"),
                                            (AMX, "intel-xeon-amx")])  # fmt: skip
def test_benchmark_results_are_filed_by_the_kind_of_cpu(cpu, tmp_path, monkeypatch, kind, name):
    import json

    from bench import machine

    cpu(kind)
    assert hardware.cpu_kind() == name
    monkeypatch.setattr(machine, "RESULTS_DIR", tmp_path)
    path = machine.write_result("rollout", {"ratio": 1.0})
    assert path == tmp_path / name / "rollout.json"  # results of other kinds stay beside it
    recorded = json.loads(path.read_text())["machine"]
    assert recorded["cpu"] == kind[0] and recorded["kind"] == name and recorded["torch_threads"] >= 1
    assert set(recorded["flags"]) <= set(hardware.FLAGS_OF_INTEREST) and recorded["flags"]


def test_caches_go_where_the_user_can_write(tmp_path, monkeypatch):
    """In an image, the code's tree belongs to root and the pods run as another user: vLLM's caches
    then live under $SFTRL_HOME (the shared volume), never in the read-only tree."""
    from services.rollout import engine
    from services.rollout.config import EngineConfig

    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    monkeypatch.setenv("SFTRL_HOME", str(tmp_path / "home"))
    (tmp_path / "tree").mkdir()
    monkeypatch.setattr(engine, "REPO_CACHE", tmp_path / "tree" / ".cache")
    assert engine.vllm_cache_dir(EngineConfig()) == tmp_path / "tree" / ".cache" / "vllm"  # a checkout
    monkeypatch.setattr(engine.os, "access", lambda path, mode: False)  # what a non-root user sees there
    assert engine.vllm_cache_dir(EngineConfig()) == tmp_path / "home" / "cache" / "vllm"
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "set"))
    assert engine.vllm_cache_dir(EngineConfig()) == tmp_path / "set"
    assert engine.vllm_cache_dir(EngineConfig(cache_dir=str(tmp_path / "cfg"))) == tmp_path / "cfg"
