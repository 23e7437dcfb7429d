"""scripts/gpu_check.py, the learner-alone GPU check: its CPU dry run end to end (the same code paths
as on a GPU, tiny sizes) and its pure helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_peak_table_by_device_name(gpu_check):
    cases = {
        "NVIDIA H100 80GB HBM3": ("H100 SXM", 989.4),
        "NVIDIA H100 PCIe": ("H100 PCIe", 756.0),
        "NVIDIA H100 NVL": ("H100 NVL", 835.0),
        "NVIDIA H200": ("H200", 989.4),
        "NVIDIA GH200 480GB": ("GH200", 989.4),
        "NVIDIA A100-SXM4-80GB": ("A100", 312.0),
        "NVIDIA A100 80GB PCIe": ("A100", 312.0),
        "NVIDIA A10": ("A10", 125.0),
        "NVIDIA L4": ("L4", 121.0),
        "NVIDIA L40S": ("L40S", 362.1),
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb": (None, None),  # a slice: the measured matmul only
        "Tesla T4": (None, None),
    }
    for name, expected in cases.items():
        assert gpu_check.table_peak(name) == expected, name


def test_result_path(gpu_check, monkeypatch, tmp_path):
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.result_path(None) == REPO / ".cache" / "gpu-check" / "gpu_check.json"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.result_path(None) == tmp_path / "gpu_check.json"
    assert gpu_check.result_path(str(tmp_path / "x.json")) == tmp_path / "x.json"


def test_cpu_dry_run_writes_the_result(tmp_path):
    out = tmp_path / "result" / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--dry", "--precision", "float32", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.is_file(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert done.returncode == 0 and result["ok"] is True, (result.get("errors"), done.stderr[-3000:])
    assert result["schema"] == 1 and result["device"] == "cpu" and result["dry"] is True
    assert result["precision"] == "float32" and result["precision_reason"] == "set in the config"
    assert "note" in result
    assert result["gpu_name"] is None and result["torch_version"] and result["deepspeed_version"]
    assert result["errors"] == []
    assert result["checks"] == {
        "environment": True, "sft": True, "rl_grpo": True, "rl_ppo": True,
        "checkpoint_roundtrip": True, "resume": True, "bench": True,
    }  # fmt: skip

    # the check model: the shipped gp-base, its loss falls on one batch
    assert result["check_model"]["parameters"] == 3331328
    losses = result["sft"]["losses"]
    assert len(losses) == len(result["sft"]["step_seconds"]) >= 2 and losses[-1] < losses[0]
    assert result["rl"]["grpo"]["metrics"]["optimizer_steps"] == 2
    assert "value_loss" in result["rl"]["ppo"]["metrics"]

    # the checkpoint came back bit for bit, and a fresh learner resumes the same step (fp32 on a CPU)
    ck = result["checkpoint"]
    assert ck["max_abs_diff"] == 0.0 and ck["hf_files_match"] and ck["extra_ok"] and ck["moved_by_a_step"] > 0
    assert ck["fresh_learner_same_weights"] and ck["resume"]["diff_norm"] == 0.0

    # FLOP/s against the peak: no table peak on a CPU, so the measured matmul is the reference
    peak = result["peak"]
    assert peak["table_tflops"] is None and peak["reference"] == "measured matmul"
    assert peak["measured_matmul_tflops"] > 0 and peak["reference_tflops"] == peak["measured_matmul_tflops"]
    bench = result["bench"]
    assert bench["parameters"] > 0 and bench["model"] == "random tiny model (dry)"
    for key in ("sft", "rl"):
        value = result["flops_per_s"][key]
        assert math.isfinite(value) and value > 0
        assert result["fraction_of_peak"][key] == pytest.approx(value / (peak["reference_tflops"] * 1e12))
    assert bench["sft"]["flops_per_s_with_attention"] > bench["sft"]["flops_per_s"]
    assert set(result["step_seconds"]) == {"check_sft", "check_grpo", "check_ppo", "bench_sft", "bench_grpo"}
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").glob("ckpt-*"))
