"""metrics.jsonl is a run's record of truth: a torn last line (a process killed mid-write) is dropped
with a warning so the run resumes; a bad line elsewhere is corruption and an error; the rewrite on
resume keeps only the records up to the checkpoint."""

from __future__ import annotations

import json

import pytest

from deploy.train.metrics import MetricsLog, read_metrics


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_run_resumes(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 4):
        log.log({"kind": "train", "global_step": step, "loss": 1.0 / step})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "global_st')  # the process died here
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["global_step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    with pytest.warns(UserWarning, match="torn last line"):
        resumed = MetricsLog(tmp_path, tensorboard=False, truncate_after_step=2)
    resumed.log({"kind": "train", "global_step": 3, "loss": 0.3})
    assert [r["global_step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary left


def test_a_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"global_step": 1}) + "\nnot json\n" + json.dumps({"global_step": 2}) + "\n")
    with pytest.raises(ValueError, match="line 2: not a JSON record"):
        read_metrics(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_metrics(path)


def test_a_run_restarted_without_a_complete_checkpoint_starts_its_record_over(tmp_path):
    """A run stopped before its first complete checkpoint, restarted (``--restart``), starts again from
    step 0 with a record of its own; the stopped attempt's records (its stage start and first
    evaluation) stay in the folder moved aside (a resume alone is refused: tests/test_resume_safety.py)."""
    from deploy.train.config import load_train_config
    from deploy.train.loop import Trainer

    config = load_train_config(None, ["model=tiny", f"output_dir={tmp_path}", "run_name=r", "tensorboard=false",
                                      "learner.precision=fp32", "rollout.engine.dtype=float32"])  # fmt: skip
    run = tmp_path / "r"
    run.mkdir()
    stopped = [{"kind": "stage_start", "stage": "sft", "global_step": 0},
               {"kind": "eval", "stage": "sft", "stage_step": 0, "global_step": 0, "success/id": 0.5}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stopped))
    (run / "checkpoints" / "step-000003").mkdir(parents=True)  # a checkpoint cut short: no COMPLETE
    trainer = Trainer(config, resume=True, restart=True)
    assert trainer.resume_state is None and read_metrics(run / "metrics.jsonl") == []
    (aside,) = tmp_path.glob("r.old-*")
    assert read_metrics(aside / "metrics.jsonl") == stopped
    assert (aside / "checkpoints" / "step-000003").is_dir()
