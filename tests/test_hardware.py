"""Precision follows the hardware: ``auto`` is bf16 only where the CPU computes it natively (AVX-512
BF16 or AMX), float32 elsewhere; asking for bf16 on a CPU without it works but warns once. The CPU's
flags are faked here (this machine has one kind of CPU; the test needs both)."""

from __future__ import annotations

import warnings

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


@pytest.mark.parametrize(("kind", "precision", "dtype"), [(AVX2_ONLY, "fp32", "float32"),
                                                         (AVX512_BF16, "bf16", "bfloat16"), (AMX, "bf16", "bfloat16")])  # fmt: skip
def test_auto_follows_the_cpu_flags(cpu, kind, precision, dtype):
    cpu(kind)
    got_precision, why = hardware.resolve_precision("auto", "cpu")
    got_dtype, why_dtype = hardware.resolve_dtype("auto", "cpu")
    assert (got_precision, got_dtype) == (precision, dtype)
    assert why.startswith("auto: ") and why == why_dtype
    assert ("natively" in why) == (precision == "bf16") and ("emulated" in why) == (precision == "fp32")
    assert hardware.cpu_facts()["native_bf16"] == (precision == "bf16")


def test_bf16_asked_for_on_a_cpu_without_it_is_obeyed_with_one_warning(cpu):
    cpu(AVX2_ONLY)
    with pytest.warns(UserWarning, match="emulated on this CPU.*4x"):
        assert hardware.resolve_precision("bf16", "cpu") == ("bf16", "set in the config")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: a second ask is silent
        assert hardware.resolve_precision("bf16", "cpu")[0] == "bf16"
        cpu(AMX)
        assert hardware.resolve_dtype("bfloat16", "cpu")[0] == "bfloat16"  # native: no warning
        assert hardware.resolve_precision("fp32", "cpu")[0] == "fp32"  # explicit choices stand


def test_a_run_writes_the_choice_and_its_reason_into_its_resolved_config(cpu, tmp_path):
    import yaml
    from rich.console import Console

    from deploy.train.config import TrainConfig
    from deploy.train.loop import _resolve_hardware
    from sftrl.config import write_resolved_config

    cpu(AVX2_ONLY)
    config = TrainConfig()
    assert (config.learner.precision, config.rollout.engine.dtype) == ("auto", "auto")  # the defaults
    console = Console(record=True, width=200)
    notes = _resolve_hardware(config, console)
    assert (config.learner.precision, config.rollout.engine.dtype) == ("fp32", "float32")
    path = write_resolved_config(config, tmp_path, notes=notes)
    text = path.read_text()
    assert text.startswith("# learner.precision: fp32 (auto: the CPU has no AVX-512 BF16 or AMX")
    assert yaml.safe_load(text)["learner"]["precision"] == "fp32"  # comments do not change the config
    assert "learner precision fp32" in console.export_text()


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
