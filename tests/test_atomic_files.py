"""Files written whole or not at all (``sftrl/files.py``): what studies, configs and trajectories use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sftrl.files import atomic_file, write_atomic


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "DONE"
    write_atomic(target, '{"output": "a"}')
    write_atomic(target, '{"output": "b"}')
    assert target.read_text() == '{"output": "b"}'
    assert [p.name for p in target.parent.iterdir()] == ["DONE"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as any file, not a private temp's 0600


def test_a_write_cut_short_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "counts.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write("half of the new")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["counts.json"]
    with atomic_file(tmp_path / "rows.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "rows.bin").read_bytes() == b"\x00\x01"


def test_demonstration_files_appear_only_when_their_writer_ends_without_error(tmp_path: Path) -> None:
    """A demonstration file streams into a temporary: a run killed halfway leaves no file a later
    SFT run would read as complete."""
    from services.envs.demonstrations import DemonstrationWriter, generate_demonstrations

    demos = list(generate_demonstrations("sftrl/GeneralPoints-v0", {"prompt_style": "compact"}, 3))
    llava, chat = tmp_path / "gp.json", tmp_path / "gp.jsonl"
    with pytest.raises(RuntimeError), DemonstrationWriter(llava, chat, tmp_path / "images") as writer:
        writer.add(demos[0])
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    with DemonstrationWriter(llava, chat, tmp_path / "images") as writer:
        for demo in demos:
            writer.add(demo)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gp.json", "gp.jsonl"]
    assert len(chat.read_text().splitlines()) == 3
