"""A client of the endpoint never makes the server open a file it names: file options (V-IRL routes,
VisualQA dataset) take only the name of a dataset in the server's data folder; a bad name is refused
with a message that shows no server path and does not say whether a file exists; what clients read
back (suites, checkpoints, errors) carries no server path."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from deploy.evaluate.checkpoint import EvalInputError, client_suite, error_text, with_dataset_files
from deploy.evaluate.serve.schemas import CheckpointList, EvaluationStatus
from sftrl.registry.records import CheckpointRecord, EvaluationRecord, SuiteSpec

SAMPLE = Path(__file__).parent / "data" / "visual_qa_sample.jsonl"
QA = "sftrl/VisualQA-v0"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "bench.jsonl")
    (tmp_path / "secret.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    return folder


@pytest.mark.parametrize("value", ["/etc/passwd", "../secret.jsonl", "datasets/bench.jsonl", "nope.jsonl",
                                   str(SAMPLE), "bench.jsonl\n", 7])  # fmt: skip
def test_file_options_take_only_offered_dataset_names(data_dir: Path, value) -> None:
    with pytest.raises(EvalInputError) as info:
        client_suite(SuiteSpec(env=QA, options={"mode": "text", "dataset": value}), data_dir)
    message = str(info.value)
    assert "offers (bench.jsonl), not a path" in message and str(data_dir) not in message
    assert "exist" not in message  # the same answer whether or not such a file exists


def test_an_offered_name_is_recorded_by_name_and_opened_from_the_data_folder(data_dir: Path) -> None:
    spec = client_suite(SuiteSpec(env=QA, options={"mode": "text", "dataset": "bench.jsonl"}), data_dir)
    assert spec.options["dataset"] == "bench.jsonl" and spec.options["mode"] == "text"  # defaults filled
    played = with_dataset_files(spec, data_dir)  # what the replica opens when the evaluation runs
    assert played.options["dataset"] == str(data_dir / "bench.jsonl")
    with pytest.raises(EvalInputError, match=r"offers \(none\)"):  # a server without a data folder
        client_suite(SuiteSpec(env=QA, options={"dataset": "bench.jsonl"}), None)
    routes = SuiteSpec(env="sftrl/VIRL-v0", options={"routes": "/srv/routes.json"})
    with pytest.raises(EvalInputError, match="'routes' takes the name of a dataset"):
        client_suite(routes, data_dir)


def test_what_clients_read_back_holds_no_server_path(caplog) -> None:
    ckpt = CheckpointRecord(
        checkpoint_id="r@3", run_id="r", step=3, path="/srv/runs/r/checkpoints/step-000003"
    )
    listed = CheckpointList.public([ckpt]).model_dump()
    assert "/srv" not in str(listed) and listed["checkpoints"][0]["checkpoint_id"] == "r@3"
    suite = SuiteSpec(env=QA, options={"dataset": "/srv/data/math.jsonl", "mode": "text"})
    ev = EvaluationRecord(
        eval_id="eval-0123456789abcdef", checkpoint_id="r@3", suite=suite, episodes=4, seed=1
    )
    shown = EvaluationStatus.from_record(ev).model_dump()
    assert shown["suite"]["options"]["dataset"] == "math.jsonl" and "/srv" not in str(shown)
    exc = ValueError("checkpoint /srv/runs/r/checkpoints/step-000003 is incomplete/corrupt")
    with caplog.at_level(logging.ERROR):
        text = error_text(exc, detailed=False, context="evaluation eval-1")
    assert text.startswith("ValueError (error ") and "/srv" not in text
    error_id = text.split("error ")[1].split(";")[0]
    assert error_id in caplog.text and "/srv/runs" in caplog.text  # the operator can find the details
    assert "/srv/runs" in error_text(exc, detailed=True, context="x")  # sftrl evaluate, in process: all of it
