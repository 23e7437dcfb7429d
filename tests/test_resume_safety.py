"""A resume never destroys a run: `sftrl train --resume` refuses a run none of whose checkpoints
verifies (it used to start again from step 0 over the run's metrics and checkpoints) and a config
that differs in what the checkpoints depend on; `--restart` starts over with the old folder moved
aside. One real run (real DeepSpeed, vLLM and Ray, the tiny model, 4 SFT steps) is copied per test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from deploy.cli import main
from deploy.train.config import TrainConfig, load_train_config
from deploy.train.folder_lock import RunFolderBusy, RunFolderLock
from deploy.train.loop import Trainer
from deploy.train.metrics import read_metrics
from deploy.train.resume import ResumeRefused, config_differences
from tests.test_cli_errors import assert_clean
from tests.test_train import BASE, FIRST_ANSWERS, sft_stage

RUN = [*BASE, "model=tiny", "run_name=r", sft_stage(4, episodes=64), FIRST_ANSWERS, "eval.episodes=8",
       "eval.at_start=false", "eval.every=2", "checkpoint.every=2", "checkpoint.keep=5"]  # fmt: skip
USAGE = 2


@pytest.fixture(autouse=True)
def models_in_test_cache(tiny_model, monkeypatch):
    monkeypatch.setenv("SFTRL_MODELS_DIR", str(Path(tiny_model).parent))


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> Path:
    """A finished 4-step run with checkpoints at steps 2 and 4 and evaluations there."""
    import os

    os.environ["SFTRL_MODELS_DIR"] = str(Path(tiny_model).parent)
    out = tmp_path_factory.mktemp("finished")
    Trainer(load_train_config(None, [*RUN, f"output_dir={out}"])).run()
    return out / "r"


def copy_of(run: Path, tmp_path: Path) -> Path:
    """The run copied to ``tmp_path/r`` (its resolved config still names the first folder: the output
    folder is not something checkpoints depend on)."""
    return Path(shutil.copytree(run, tmp_path / "r"))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def train(tmp_path: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *RUN, f"output_dir={tmp_path}", *args])
    return result.exit_code, result.output


def started(self, *args, **kwargs):
    """In place of ``Trainer.run``: a refusal comes before anything starts (without the protections the
    resume would train, over the run's files)."""
    raise AssertionError("training started")


@pytest.mark.slow
@pytest.mark.fault
def test_a_resume_with_no_checkpoint_that_verifies_is_refused_and_restart_keeps_the_old_run(
    finished_run, tmp_path, monkeypatch
):
    run = copy_of(finished_run, tmp_path)
    for weights in run.glob("checkpoints/step-*/model.safetensors"):  # every checkpoint damaged
        weights.write_bytes(weights.read_bytes()[:-7])
    before = snapshot(run)
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run", started)
        code, out = train(tmp_path, "--resume", "auto")  # what a retried cluster job runs
        assert code == USAGE, out
        assert "cannot be resumed: none of its 2 checkpoints verifies (the newest:" in out
        assert "model.safetensors does not match its sha256" in out
        assert "would replace its metrics.jsonl (" in out and "--restart" in out
        assert_clean(CliRunner().invoke(main, ["train", *RUN, f"output_dir={tmp_path}", "--resume"]),
                     "cannot be resumed: none of its 2 checkpoints verifies", USAGE)  # fmt: skip
        assert snapshot(run) == before  # the metrics, the checkpoints and the resolved config as they were
        # a run stopped before its first checkpoint, too
        shutil.rmtree(run / "checkpoints")
        code, out = train(tmp_path, "--resume", "yes")
        assert code == USAGE and "cannot be resumed: it has no complete checkpoint" in out, out
        assert "metrics.jsonl (" in out and read_metrics(run / "metrics.jsonl")
    # --restart starts over for real, the old folder renamed aside whole
    before = snapshot(run)
    code, out = train(tmp_path, "--resume", "auto", "--restart")
    assert code == 0, out
    (aside,) = tmp_path.glob("r.old-*")
    assert snapshot(aside) == before and aside.name in out.replace("\n", "")
    records = read_metrics(run / "metrics.jsonl")
    assert [r["global_step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]


@pytest.mark.slow
@pytest.mark.fault
def test_a_resume_under_another_config_is_refused_naming_the_keys(finished_run, tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "run", started)
    run = copy_of(finished_run, tmp_path)
    before = snapshot(run)
    allowed = ["eval.every=1", "checkpoint.keep=2", "learner.micro_batch_size=4", "rollout.engine.threads=1"]
    changed = ["seed=1", "stages.0.optim.lr=1.0e-3", "learner.zero_stage=2"]
    code, out = train(tmp_path, *allowed, *changed, "--resume", "auto")
    assert code == USAGE, out
    message = out[out.index("error:") :].replace("\n", " ")
    assert "checkpoints were made with another config: seed (0 -> 1)" in message
    assert "stages.0.optim.lr (0.003 -> 0.001)" in message and "learner.zero_stage (0 -> 2)" in message
    for key in ("eval.every", "checkpoint.keep", "micro_batch_size", "rollout.engine"):
        assert key not in message
    assert "resolved_config.yaml" in message  # where the run's own config is
    assert snapshot(run) == before
    # another model is refused too, with no traceback
    assert_clean(CliRunner().invoke(main, ["train", *RUN, f"output_dir={tmp_path}", "--resume", "yes",
                                           f"model={tmp_path / 'r' / 'checkpoints' / 'step-000002'}"]),
                 "checkpoints were made with another config: model (\"tiny\" ->", USAGE)  # fmt: skip
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_resume_that_changes_only_evaluation_checkpointing_or_execution_continues(finished_run, tmp_path):
    """What may differ does not block a resume: the run continues from its checkpoint on the real loop."""
    run = copy_of(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-000004")  # resumed from step 2: DeepSpeed loads it
    code, out = train(tmp_path, "eval.every=1", "checkpoint.keep=2", "learner.micro_batch_size=4", "--resume")
    assert code == 0, out
    assert "resuming from" in out and "step-000002" in out.replace("\n", "")
    records = read_metrics(run / "metrics.jsonl")
    assert [r["global_step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["global_step"] for r in records if r["kind"] == "eval"] == [2, 3, 4]  # eval.every=1 from step 3
    assert yaml.safe_load((run / "resolved_config.yaml").read_text())["eval"]["every"] == 1


# -- without a run ------------------------------------------------------------------------------------


def test_config_differences_name_only_what_checkpoints_depend_on():
    old = TrainConfig().model_dump(mode="json")
    new = TrainConfig.model_validate({
        "output_dir": "elsewhere", "tensorboard": False, "eval": {"every": 1}, "checkpoint": {"keep": 1},
        "learner": {"micro_batch_size": 2, "threads": 1, "world_size": 2}, "rollout": {"num_actors": 3},
        "stages": [{"kind": "sft", "data": {"episodes": 7}}], "env": {"options": {"face_cards": "as_10"}},
    }).model_dump(mode="json")  # fmt: skip
    assert config_differences(old, new) == ["env.options.face_cards", "stages", "learner.world_size"]
    one_stage = {**old, "stages": old["stages"][:1]}
    assert config_differences(one_stage, new) == [
        "env.options.face_cards", "stages.0.data.episodes", "learner.world_size"
    ]  # fmt: skip
    assert config_differences(old, old) == []


def test_a_folder_that_holds_no_records_or_checkpoints_starts_without_a_question(tmp_path):
    """A run stopped while it was starting (Ray, the engines) left its config only: `--resume auto`
    starts it, and a config written by an earlier attempt does not matter."""
    base = ["model=tiny", f"output_dir={tmp_path}", "run_name=r", "tensorboard=false", "learner.precision=fp32",
            "rollout.engine.dtype=float32"]  # fmt: skip
    Trainer(load_train_config(None, [*base, "seed=5"])).close()  # writes the folder and its config
    trainer = Trainer(load_train_config(None, base), resume=True)
    assert trainer.resume_state is None and not list(tmp_path.glob("r.old-*"))
    assert yaml.safe_load((tmp_path / "r" / "resolved_config.yaml").read_text())["seed"] == 0


@pytest.mark.fault
def test_a_run_folder_has_one_writer_at_a_time(tmp_path):
    """A second driver of a folder that another process is writing is refused, with who holds it; the
    kernel frees the folder when its writer dies, even by SIGKILL, so a crash never leaves it locked."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, sys, time; from deploy.train.folder_lock import RunFolderLock; "
         "lock = RunFolderLock(pathlib.Path(sys.argv[1])); print('held', flush=True); time.sleep(120)", str(tmp_path / "r")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, out = train(tmp_path)
        assert code == USAGE and f"is being written by another run now (pid {holder.pid} on" in out, out
        assert "Traceback" not in out and len(out.strip().splitlines()) == 1
        assert not (tmp_path / "r").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    config = load_train_config(None, [*RUN, f"output_dir={tmp_path}"])
    first = Trainer(config)  # the dead holder's lock went with it
    with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()} on"):
        Trainer(load_train_config(None, [*RUN, f"output_dir={tmp_path}"]), resume=True)
    first.close()
    Trainer(load_train_config(None, [*RUN, f"output_dir={tmp_path}"]), resume=True).close()
    lock = tmp_path / ".r.lock"
    lock.unlink()
    lock.symlink_to(tmp_path / "elsewhere")  # planted on a shared volume: never followed
    with pytest.raises(ResumeRefused, match="is a link, not a run's lock file"):
        RunFolderLock(tmp_path / "r")
    assert not (tmp_path / "elsewhere").exists()
