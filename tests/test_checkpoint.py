"""Checkpoints: atomic writes, verification, retention, and an exact resume of a DeepSpeed learner."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from sftrl.checkpoint import (
    COMPLETE_NAME,
    MAX_JSON_BYTES,
    CheckpointManager,
    atomic_checkpoint,
    read_trainer_state,
    temp_path,
    verify,
    write_trainer_state,
)
from sftrl.ports import free_loopback_port


def fake_writer(step: int):
    """A checkpoint with the files a real one has at the top (weights, config, state)."""
    from safetensors.torch import save_file

    def write(final: Path) -> None:
        with atomic_checkpoint(final) as tmp:
            save_file({"w": torch.full((4, 4), float(step))}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text("{}")
            write_trainer_state(tmp, {"extra": {"step": step}})

    return write


@pytest.mark.fault
def test_latest_skips_unfinished_and_corrupt_checkpoints(tmp_path, caplog):
    manager = CheckpointManager(tmp_path, keep=5)
    for step in (1, 2, 3):
        manager.save(step, fake_writer(step))
    assert manager.latest() == tmp_path / "step-000003"
    # a writer killed mid-write: its temporary folder was never renamed
    crashed = temp_path(tmp_path / "step-000004", pid=999999)
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"partial")
    assert manager.latest() == tmp_path / "step-000003"
    # a step folder without the marker (e.g. copied by hand, interrupted)
    (tmp_path / "step-000005").mkdir()
    (tmp_path / "step-000005" / "config.json").write_text("{}")
    # a complete one whose weights were damaged afterwards
    weights = tmp_path / "step-000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING):
        assert manager.latest() == tmp_path / "step-000002"
    assert "step-000005 is incomplete/corrupt: no COMPLETE marker" in caplog.text
    assert "step-000003 is incomplete/corrupt: model.safetensors does not match its sha256" in caplog.text
    with pytest.raises(
        ValueError, match=r"step-000003 is incomplete/corrupt: model\.safetensors does not match"
    ):
        read_trainer_state(tmp_path / "step-000003")
    assert read_trainer_state(tmp_path / "step-000002")["extra"] == {"step": 2}
    # pruning removes the dead writer's temporary folder and broken ones older than the newest good
    (tmp_path / COMPLETE_NAME).write_text("not a checkpoint")  # unrelated files are left alone
    removed = manager.prune()
    assert crashed in removed and tmp_path / "step-000003" not in removed  # newer than step 2: kept
    assert not crashed.exists()


@pytest.mark.fault
def test_every_file_is_covered_and_a_replacement_cut_short_is_repaired(tmp_path, caplog):
    """Optimizer shards (DeepSpeed loads them with pickle), the trainer state and the tokenizer are
    hashed like the weights; a file added afterwards fails too; a crash between the two renames of
    a replaced checkpoint loses nothing."""

    def writer(step: int):
        base = fake_writer(step)

        def write(final: Path) -> None:
            def extra(tmp: Path) -> None:
                (tmp / "deepspeed").mkdir()
                (tmp / "deepspeed" / "optim_states.pt").write_bytes(bytes(range(256)) * 4)
                (tmp / "tokenizer.json").write_text('{"model": {}}')

            with atomic_checkpoint(final) as tmp:
                base_tmp = tmp.parent / (tmp.name + "-base")
                base(base_tmp)  # a complete checkpoint of its own, copied in below
                for path in base_tmp.iterdir():
                    if path.name != COMPLETE_NAME:
                        path.replace(tmp / path.name)
                base_tmp.joinpath(COMPLETE_NAME).unlink()
                base_tmp.rmdir()
                extra(tmp)

        return write

    manager = CheckpointManager(tmp_path, keep=5)
    for step in (1, 2):
        manager.save(step, writer(step))
    marker = json.loads((tmp_path / "step-000002" / COMPLETE_NAME).read_text())
    assert set(marker["sha256"]) == {"model.safetensors", "config.json", "trainer_state.json",
                                     "deepspeed/optim_states.pt", "tokenizer.json"}  # fmt: skip
    shard = tmp_path / "step-000002" / "deepspeed" / "optim_states.pt"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, other bytes: only the hash sees it
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert manager.latest() == tmp_path / "step-000001"  # skipped for the one before, and said so
    assert "deepspeed/optim_states.pt does not match its sha256" in caplog.text
    assert "trying the one before" in caplog.text
    (tmp_path / "step-000001" / "notes.txt").write_text("dropped in later")
    with pytest.raises(ValueError, match="files not in the marker: notes.txt"):
        verify(tmp_path / "step-000001")
    # a replacement cut short after step-000003 was moved aside and before the new one was renamed in
    manager.save(3, writer(3))
    aside = tmp_path / ".step-000003.old-999999"
    (tmp_path / "step-000003").replace(aside)
    assert manager.latest() == tmp_path / "step-000003" and not aside.exists()  # put back
    (tmp_path / "step-000003").rename(aside)
    manager.save(3, writer(3))  # the new one landed: the old copy is removed
    manager.steps()
    assert not aside.exists() and verify(tmp_path / "step-000003")


def test_retention_keeps_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in range(1, 6):
        manager.save(step * 10, fake_writer(step))
    assert [p.name for _, p in manager.steps()] == ["step-000040", "step-000050"]
    # saving the same step again replaces it
    manager.save(50, fake_writer(7))
    assert read_trainer_state(manager.latest())["extra"] == {"step": 7}
    assert not list(tmp_path.glob(".*"))


@pytest.mark.fault
def test_failed_write_leaves_nothing(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(1, fake_writer(1))

    def broken(final: Path) -> None:
        with atomic_checkpoint(final) as tmp:
            (tmp / "config.json").write_text("{}")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        manager.save(2, broken)
    assert manager.latest() == tmp_path / "step-000001" and not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError, match="incomplete/corrupt: no such folder"):
        verify(tmp_path / "step-000002")


# -- a real learner ---------------------------------------------------------------------------------


@pytest.mark.fault
def test_checkpoints_load_only_from_their_roots(tmp_path, monkeypatch):
    """A registry record names a folder; only one under a checkpoint root that verifies is opened."""
    from sftrl.checkpoint import ROOTS_ENV, UntrustedCheckpoint, checkpoint_roots, trusted

    inside, outside = tmp_path / "runs" / "step-000001", tmp_path / "elsewhere" / "step-000001"
    fake_writer(1)(inside)
    fake_writer(1)(outside)
    roots = [tmp_path / "runs"]
    assert trusted(inside, roots) == inside.resolve()
    with pytest.raises(UntrustedCheckpoint, match="outside the checkpoint roots"):
        trusted(outside, roots)
    link = tmp_path / "runs" / "step-000002"  # a link under a root to a folder outside it
    link.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UntrustedCheckpoint):
        trusted(link, roots)
    with pytest.raises(UntrustedCheckpoint):  # ".." out of a root
        trusted(tmp_path / "runs" / ".." / "elsewhere" / "step-000001", roots)
    (inside / "config.json").write_text('{"changed": true}')
    with pytest.raises(ValueError, match="incomplete/corrupt"):  # under a root, but changed
        trusted(inside, roots)
    # where the roots come from: given, else the environment, else SFTRL_HOME and the working folder
    monkeypatch.setenv("SFTRL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    assert checkpoint_roots() == [(tmp_path / "home").resolve(), tmp_path.resolve()]
    monkeypatch.setenv(ROOTS_ENV, f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert checkpoint_roots() == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    assert checkpoint_roots(["x"]) == [(tmp_path / "x").resolve()]


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2, 3])  # each stage's state, through the weights-only loader
def test_resume_is_exact(tiny_model, tmp_path, zero_stage):
    from transformers import AutoModelForCausalLM

    from services.envs.demonstrations import generate_demonstrations
    from services.learner.config import LearnerConfig
    from services.learner.sft_data import SFTConversation, tokenize_sft
    from services.learner.worker import LearnerWorker
    from sftrl.models.processor import load_tokenizer_or_processor

    demos = generate_demonstrations("sftrl/GeneralPoints-v0", {"prompt_style": "compact"}, 24)
    tok = load_tokenizer_or_processor(str(tiny_model))
    rows = tokenize_sft([SFTConversation(d.episode_id, d.messages) for d in demos], tok, 1024)
    data = [rows[i : i + 6] for i in range(0, 24, 6)]
    config = LearnerConfig.model_validate({
        "model": str(tiny_model), "micro_batch_size": 4, "zero_stage": zero_stage, "precision": "fp32",
        "optim": {"lr": 2e-3, "warmup_steps": 2, "total_steps": 6, "min_lr_ratio": 0.1, "weight_decay": 0.01},
    })  # fmt: skip

    def make() -> LearnerWorker:
        return LearnerWorker(config, None, 0, 1, "127.0.0.1", free_loopback_port(), value_head=True)

    manager = CheckpointManager(tmp_path / "run", keep=1)
    worker = make()
    try:
        for batch in data[:2]:
            worker.sft_step(batch)
        saved = worker.policy_state_dict(dtype="float32")
        path = manager.save(2, lambda p: worker.save_checkpoint(p, {"step": 2, "data_position": 12}))
        draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
        expected = [worker.sft_step(batch) for batch in data[2:]]
        head = {k: v.clone() for k, v in worker.module.value_head.state_dict().items()}
    finally:
        worker.shutdown()
    assert expected[1]["lr"] != expected[0]["lr"]  # the schedule moves: its state matters

    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # noqa: B018
    resumed = make()
    try:
        assert manager.latest() == path
        extra = resumed.load_checkpoint(manager.latest())
        assert extra == {"step": 2, "data_position": 12}
        assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws
        state = resumed.policy_state_dict(dtype="float32")
        assert all(torch.equal(state[k], saved[k]) for k in saved)
        got = [resumed.sft_step(batch) for batch in data[2:]]
        for a, b in zip(expected, got):
            assert a["loss"] == b["loss"] and a["lr"] == b["lr"] and a["grad_norm"] == b["grad_norm"]
        assert all(torch.equal(v, head[k]) for k, v in resumed.module.value_head.state_dict().items())
    finally:
        resumed.shutdown()

    # the folder is an HF model (transformers loads it; the value head lies in its own folder)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    assert (path / "value_head" / "model.safetensors").is_file()
    assert json.loads((path / "trainer_state.json").read_text())["extra"]["data_position"] == 12
    assert (path / "chat_template.jinja").is_file() or "chat_template" in (
        path / "tokenizer_config.json"
    ).read_text()
    # a load of a damaged checkpoint is a clear error, not a safetensors traceback
    (path / "model.safetensors").write_bytes(b"\0" * 64)
    broken = make()
    try:
        with pytest.raises(
            ValueError, match="incomplete/corrupt: model.safetensors does not match its sha256"
        ):
            broken.load_checkpoint(path)
    finally:
        broken.shutdown()


class _Payload:
    """What a planted shard would hold: an object whose unpickling calls a function."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_deepspeed_state_is_read_without_unpickling_code(tmp_path, capsys):
    import pickle

    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from services.learner.safe_state import load_state

    honest, planted = tmp_path / "honest.pt", tmp_path / "planted.pt"
    torch.save({"zero_stage": ZeroStageEnum.gradients, "loss_scaler": DynamicLossScaler(8.0, 1000, 1.0, 2, True),
                "state": {0: {"exp_avg": torch.ones(3)}}}, honest)  # fmt: skip
    torch.save({"optimizer": _Payload()}, planted)
    read = load_state(str(honest))
    assert read["zero_stage"] is ZeroStageEnum.gradients and read["loss_scaler"].cur_scale == 8.0
    assert torch.equal(read["state"][0]["exp_avg"], torch.ones(3))
    with pytest.raises(pickle.UnpicklingError):
        load_state(str(planted))
    assert "unpickled" not in capsys.readouterr().out


@pytest.mark.timeout(60)
def test_a_marker_is_read_within_bounds(tmp_path):
    """A checkpoint folder on a shared volume is anyone's: its marker is read only if it is a regular
    file of at most MAX_JSON_BYTES (the endpoint verifies a checkpoint before loading it)."""
    folder = tmp_path / "step-000001"
    folder.mkdir()
    os.mkfifo(folder / COMPLETE_NAME)  # would block a plain read until someone writes to it
    with pytest.raises(ValueError, match="unreadable COMPLETE marker .*not a regular file"):
        verify(folder)
    (folder / COMPLETE_NAME).unlink()
    with (folder / COMPLETE_NAME).open("wb") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing is written, the size alone is refused
    with pytest.raises(ValueError, match="unreadable COMPLETE marker .*larger than"):
        verify(folder)
