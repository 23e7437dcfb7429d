"""scripts/install.sh's decision (device, where torch comes from), offline: ``--plan`` prints it and
exits before any venv, apt or pip step, so these tests touch nothing outside their temp folders."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "install.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
WHEEL = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def plan(tmp_path: Path, *args: str, via_env: bool = False, **env: str) -> subprocess.CompletedProcess:
    """Run the plan with a clean SFTRL_* environment; the default wheel folder is an empty temp
    folder unless ``env`` names another, and the venv path is one that must never be created."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SFTRL_")}
    empty_default = tmp_path / "default-wheels"
    empty_default.mkdir(exist_ok=True)
    base.update(
        SFTRL_DEVICE="cpu",
        SFTRL_DEFAULT_TORCH_WHEELS=str(empty_default),
        SFTRL_VENV=str(tmp_path / "must-not-exist"),
        PIP_NO_INDEX="1",  # belt and braces: no network even if the plan went on by mistake
    )
    base.update(env)
    argv = ["bash", str(SCRIPT), *args]
    if via_env:
        base["SFTRL_INSTALL_PLAN"] = "1"
    else:
        argv.append("--plan")
    out = subprocess.run(argv, env=base, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert not (tmp_path / "must-not-exist").exists(), "the plan created a venv"
    return out


def fields(out: subprocess.CompletedProcess) -> dict[str, str]:
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    parsed = dict(line.split("=", 1) for line in lines)
    assert set(parsed) == {"device", "torch", "torch_source", "torch_from"}, out.stdout
    return parsed


@pytest.mark.parametrize("explicit", [True, False], ids=["SFTRL_TORCH_WHEELS", "default-folder"])
def test_local_wheel_folder(tmp_path: Path, explicit: bool) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / WHEEL).write_bytes(b"")
    env = {"SFTRL_TORCH_WHEELS": str(wheels)} if explicit else {"SFTRL_DEFAULT_TORCH_WHEELS": str(wheels)}
    got = fields(plan(tmp_path, **env))
    assert got == {
        "device": "cpu",
        "torch": "torch==2.13.0+cpu",
        "torch_source": "folder",
        "torch_from": str(wheels.resolve()),
    }


def test_relative_wheel_folder_is_the_callers(tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / WHEEL).write_bytes(b"")
    got = fields(plan(tmp_path, SFTRL_TORCH_WHEELS="w"))
    assert got["torch_source"] == "folder" and got["torch_from"] == str((tmp_path / "w").resolve())


@pytest.mark.parametrize("default", ["empty", "missing", "other-wheels"])
def test_cpu_index_without_local_wheel(tmp_path: Path, default: str) -> None:
    folder = tmp_path / "default"
    if default != "missing":
        folder.mkdir()
    if default == "other-wheels":  # a wheel of another torch / Python does not count
        (folder / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
        (folder / "torch-2.13.0+cpu-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
        (folder / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    got = fields(plan(tmp_path, SFTRL_DEFAULT_TORCH_WHEELS=str(folder)))
    assert got["device"] == "cpu"
    assert got["torch"] == "torch==2.13.0+cpu"
    assert got["torch_source"] == "index"
    assert got["torch_from"] == CPU_INDEX


def test_plan_through_the_environment_variable(tmp_path: Path) -> None:
    got = fields(plan(tmp_path, via_env=True))
    assert got["torch_source"] == "index" and got["torch_from"] == CPU_INDEX


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_explicit_folder_without_the_wheel_fails_clearly(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "explicit"
    if kind == "empty":
        folder.mkdir()
    out = plan(tmp_path, SFTRL_TORCH_WHEELS=str(folder))
    assert out.returncode != 0
    assert out.stdout == ""  # no half-printed plan
    message = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(message) == 1, out.stderr
    assert "ERROR" in message[0] and f"SFTRL_TORCH_WHEELS={folder}" in message[0]
    assert "torch-2.13.0+cpu" in message[0] or "not a folder" in message[0]
    assert "Traceback" not in out.stderr


def test_cuda_uses_neither_cpu_index_nor_local_wheel(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / WHEEL).write_bytes(b"")
    # even with a CPU wheel at hand, explicitly and by default
    got = fields(plan(tmp_path, SFTRL_DEVICE="cuda", SFTRL_TORCH_WHEELS=str(wheels),
                      SFTRL_DEFAULT_TORCH_WHEELS=str(wheels)))  # fmt: skip
    assert got["device"] == "cuda"
    assert got["torch_source"] == "pypi"
    assert "+cpu" not in got["torch"]
    assert CPU_INDEX not in got["torch_from"] and str(wheels) not in got["torch_from"]


def test_bad_arguments_and_device(tmp_path: Path) -> None:
    out = plan(tmp_path, "--bogus")
    assert out.returncode != 0 and "unknown argument" in out.stderr and "Traceback" not in out.stderr
    out = plan(tmp_path, SFTRL_DEVICE="tpu")
    assert out.returncode != 0 and "SFTRL_DEVICE must be" in out.stderr
