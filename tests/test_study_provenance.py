"""A study records the prepared base it started from (models.json), refuses to resume from another one
of the same name (a base made with another seed, in another models folder), and its report names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from deploy.studies.provenance import MODELS_FILE, read_models
from deploy.studies.recipe import Study
from deploy.studies.report import write_report
from deploy.studies.runner import StudyRunner
from sftrl.config import ConfigError
from sftrl.models.testing import prepared_model

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / ".cache" / "test-models"


def _study() -> Study:
    return Study(
        name="s", title="T", base={"model": "tiny"}, arms=[{"name": "a", "kind": "train", "config": {}}]
    )


def _finished_arm(folder: Path) -> None:
    folder.mkdir(parents=True)
    record = {"kind": "eval", "stage": "s", "global_step": 0, "success/id": 0.5, "episodes/id": 8}
    (folder / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (folder / "DONE").write_text("{}")


def test_a_study_names_its_base_and_will_not_resume_from_another(tmp_path, monkeypatch):
    seed0 = prepared_model("tiny", MODELS / "provenance-seed0", seed=0)
    seed1 = prepared_model("tiny", MODELS / "provenance-seed1", seed=1)
    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    runner = StudyRunner(_study(), tmp_path / "runs", quiet)

    monkeypatch.setenv("SFTRL_MODELS_DIR", str(seed0.parent))
    runner._prepare_models()
    runner._prepare_models()  # the same base again: resumes
    recorded = read_models(runner.dir)["tiny"]
    sha0 = json.loads((seed0 / "sftrl_model.json").read_text())["weights_sha256"]
    assert (recorded["weights_sha256"], recorded["options"]["seed"]) == (sha0, 0)

    monkeypatch.setenv("SFTRL_MODELS_DIR", str(seed1.parent))
    with pytest.raises(ConfigError, match=r"another tiny \(seed 0.*seed 1.*SFTRL_MODELS_DIR"):
        runner._prepare_models()
    assert read_models(runner.dir)["tiny"]["weights_sha256"] == sha0  # the record is kept

    _finished_arm(runner.dir / "seed-0" / "a")
    (runner.dir / "study.yaml").write_text(json.dumps({"name": "s", "title": "T", "arms": [{"name": "a"}]}))
    text = write_report([runner.dir], tmp_path / "out").read_text()
    assert f"Started from: tiny (seed 0, arch llama; weights sha256 {sha0[:12]})." in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["models"] == {
        str(runner.dir): {"tiny": recorded}
    }

    other = StudyRunner(_study(), tmp_path / "runs-seed1", quiet)  # the same study from the seed-1 base
    other._prepare_models()
    _finished_arm(other.dir / "seed-0" / "a")
    (other.dir / "study.yaml").write_text((runner.dir / "study.yaml").read_text())
    text = " ".join(write_report([runner.dir, other.dir], tmp_path / "both").read_text().split())
    assert f"tiny in {runner.dir} (seed 0," in text and f"tiny in {other.dir} (seed 1," in text


def test_an_unreadable_record_reads_as_none(tmp_path):
    (tmp_path / MODELS_FILE).write_text("[not json")
    assert read_models(tmp_path) == {}
    (tmp_path / MODELS_FILE).write_text(json.dumps(["a list"]))
    assert read_models(tmp_path) == {}
