"""The command line: env list/play and data sft, through click's runner and the installed script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from deploy.cli import main, parse_env_options


def run(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_parse_env_options():
    assert parse_env_options(["--face-cards", "as_11_12_13", "--target=12", "verify_iter=3"]) == {
        "face_cards": "as_11_12_13",
        "target": 12,
        "verify_iter": 3,
    }


def test_env_list_names_every_environment():
    result = run("env", "list")
    assert result.exit_code == 0
    for env_id in ("GeneralPoints-v0", "VIRL-v0", "VisualQA-v0"):
        assert env_id in result.output
    assert "face_cards" in result.output


def test_play_a_solved_episode_with_a_hint_and_a_retry(tmp_path):
    image = tmp_path / "table.png"
    answers = ":hint\n" + '{"formula": "1+1"}\n' + '{"cards": ["3","3","8","8"], "formula": "8/(3-8/3)=24"}\n'
    result = run("env", "play", "sftrl/GeneralPoints-v0", "--seed", "1", "--mode", "image",
                 "--image-size", "128", "--image-out", str(image), input=answers)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "expert:" in result.output and "reward -" in result.output
    assert Image.open(image).size == (128, 128)


def test_play_solved_with_the_expert_answer():
    # The hint is the expert's answer; replaying it solves the episode.
    out = run("env", "play", "sftrl/GeneralPoints-v0", "--seed", "5", input=":hint\n:quit\n").output
    hint = out.split("expert:")[1].strip().splitlines()[0]
    result = run("env", "play", "sftrl/GeneralPoints-v0", "--seed", "5", input=hint + "\n")
    assert "solved" in result.output and "+5" in result.output


def test_play_rejects_bad_options():
    result = CliRunner().invoke(main, ["env", "play", "sftrl/GeneralPoints-v0", "--mode", "video"])
    assert result.exit_code == 2 and "mode" in result.output
    result = CliRunner().invoke(main, ["env", "play", "sftrl/Nope-v0"])
    assert result.exit_code == 2 and "unknown environment" in result.output


def test_data_sft_writes_both_formats_and_the_resolved_config(tmp_path):
    out = tmp_path / "demos" / "gp.json"
    result = run("data", "sft", "--env", "sftrl/GeneralPoints-v0", "--episodes", "20", "--out", str(out),
                 "--revision-fraction", "0.5", "--mode", "image", "--image-size", "96")  # fmt: skip
    assert result.exit_code == 0, result.output
    llava = json.loads(out.read_text())
    chat = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert len(llava) == len(chat) == 20
    revised = [r for r in llava if r["meta"]["revision"]]
    assert 3 <= len(revised) <= 17
    for record in llava:
        turns = record["conversations"]
        assert [t["from"] for t in turns][::2] == ["human"] * ((len(turns) + 1) // 2)
        assert turns[0]["value"].startswith("<image>\n") and (out.parent / record["image"]).exists()
        assert json.loads(turns[-1]["value"])["formula"].endswith("=24")
    assert all(len(r["conversations"]) == 4 for r in revised)
    first = chat[0]["messages"][0]["content"]
    assert first[0]["type"] == "image_url" and first[1]["type"] == "text"
    resolved = yaml.safe_load((out.parent / "gp.resolved_config.yaml").read_text())
    assert resolved["env"]["options"]["mode"] == "image" and resolved["env"]["options"]["verify_iter"] == 5


def test_data_sft_is_reproducible(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        run("data", "sft", "--env", "sftrl/GeneralPoints-v0", "--episodes", "15", "--out", str(path),
            "--format", "chat", "--seed", "3")  # fmt: skip
    assert a.read_text() == b.read_text()
    assert not a.with_suffix(".json").exists()


def test_data_sft_bad_option_writes_nothing(tmp_path):
    out = tmp_path / "x.json"
    result = CliRunner().invoke(main, ["data", "sft", "--env", "sftrl/GeneralPoints-v0", "--out", str(out),
                                       "--target", "-3"])  # fmt: skip
    assert result.exit_code == 2 and "target" in result.output
    assert not list(tmp_path.iterdir())


def test_console_script_is_installed():
    """`make install` puts `sftrl` beside the venv's python (on PATH once the venv is activated)."""
    script = Path(sys.executable).parent / "sftrl"
    found = str(script) if script.is_file() else shutil.which("sftrl")
    assert found, "no sftrl console script beside this python or on PATH: run make install"
    proc = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "env" in proc.stdout and "data" in proc.stdout


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_checkout(tmp_path):
    """`pip install .` (a wheel, not editable) into a fresh venv that reuses this venv's dependencies
    (a .pth line, `--no-deps`): `sftrl study --list` and `sftrl env list` run from another folder,
    with every module imported from the wheel (recipes and the shipped base are package data)."""
    import sysconfig
    import venv

    repo = Path(__file__).resolve().parents[1]
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(repo)], check=True, timeout=600)  # fmt: skip
    (wheel,) = wheels.glob("sftrl-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    # the dependencies, found after the wheel's own files (this venv's editable finder is not loaded)
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, timeout=600)  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run([str(python), "-c", "import deploy, services, sftrl; print(deploy.__file__, "
                            "services.__file__, sftrl.__file__)"], cwd=outside, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    assert all(Path(p).is_relative_to(site) for p in where), where
    script = env_dir / "bin" / "sftrl"
    studies = subprocess.run([str(script), "study", "--list"], cwd=outside, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert studies.returncode == 0, studies.stderr
    assert "gp-l-rule-ood" in studies.stdout and "combinations" in studies.stdout
    envs = subprocess.run(
        [str(script), "env", "list"], cwd=outside, capture_output=True, text=True, timeout=120
    )
    assert envs.returncode == 0 and "sftrl/GeneralPoints-v0" in envs.stdout, envs.stderr
