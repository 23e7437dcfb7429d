"""How learner ranks meet: a private file on one node (the two-rank group over real Ray, with its
listening sockets, is in tests/test_learner.py), TCP only across nodes."""

from __future__ import annotations

import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest

from services.learner import rendezvous


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)  # restored after the test
    return tmp_path / f"sftrl-rendezvous-{os.getuid()}"


def test_one_node_meets_through_a_fresh_file_in_a_private_folder(private_tmp: Path) -> None:
    address, key = rendezvous.fresh_rendezvous(one_node=True)
    assert address == "127.0.0.1" and not (private_tmp / str(key)).exists()
    assert private_tmp.stat().st_mode & 0o777 == 0o700
    method = rendezvous.meeting_point(2, address, key, "cpu", timedelta(seconds=5))
    assert method == f"file://{private_tmp / str(key)}"
    assert os.environ["GLOO_SOCKET_IFNAME"] == rendezvous.loopback_interface()
    # across nodes: the MASTER_* variables (TCP at rank 0's node address)
    assert rendezvous.meeting_point(2, "10.0.0.7", 29500, "cpu", timedelta(seconds=5)) is None


@pytest.mark.hostile
def test_a_folder_another_user_could_write_is_refused(private_tmp: Path) -> None:
    private_tmp.mkdir(mode=0o700)
    private_tmp.chmod(0o777)  # as if someone made it first, open to all
    with pytest.raises(PermissionError, match="mode 0700"):
        rendezvous.fresh_rendezvous(one_node=True)


def test_files_of_killed_runs_are_swept_after_a_week(private_tmp: Path) -> None:
    private_tmp.mkdir(mode=0o700)
    old, new = private_tmp / "123456", private_tmp / "654321"
    old.write_text("x")
    new.write_text("y")
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    rendezvous.fresh_rendezvous(one_node=True)
    assert not old.exists() and new.exists()
