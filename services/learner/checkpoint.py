"""Training checkpoints: one folder per step, written atomically, verified before use.

``<root>/step-000042/`` holds

- the policy in HF format (``config.json``, ``model.safetensors``, tokenizer or processor files with
  the chat template): loadable by transformers' ``from_pretrained`` and by vLLM as a model folder;
- ``value_head/`` (``model.safetensors`` + ``config.json``) when the learner has a value head: a
  folder of its own, because vLLM reads every ``*.safetensors`` beside ``config.json`` and refuses
  keys its model does not have;
- ``deepspeed/``: the engine's own checkpoint (module, optimizer and scheduler state, per rank);
- ``trainer_state.json``: the caller's ``extra`` (step, data position, metrics) and every rank's
  RNG states;
- ``COMPLETE``, written last: the sha256 of every weight file.

A checkpoint is written into ``.step-000042.tmp-<pid>`` and renamed into place with ``os.replace``
once complete, so a crash mid-write leaves only a hidden temporary folder and the last good
checkpoint stays the newest. :meth:`CheckpointManager.latest` re-hashes the weights and skips (with
a warning naming it) any checkpoint that is incomplete or whose files changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftrl.processes import pid_alive

log = logging.getLogger(__name__)

COMPLETE_NAME = "COMPLETE"
STATE_NAME = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"
VALUE_HEAD_DIR = "value_head"
FORMAT = 1
_STEP_RE = re.compile(r"^step-(\d+)$")
_TMP_RE = re.compile(r"^\.step-\d+\.tmp-(\d+)$")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(folder: Path) -> int | None:
    """The step of a ``step-N`` folder, None for any other name."""
    m = _STEP_RE.match(folder.name)
    return int(m.group(1)) if m else None


def temp_path(final: Path, pid: int | None = None) -> Path:
    """Where ``final`` is written before it is renamed into place."""
    return final.parent / f".{final.name}.tmp-{pid if pid is not None else os.getpid()}"


def weight_files(folder: Path) -> list[Path]:
    """The files whose hashes make a checkpoint's identity: policy and value-head weights."""
    files = sorted(folder.glob("*.safetensors")) + sorted((folder / VALUE_HEAD_DIR).glob("*.safetensors"))
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_complete(folder: Path) -> None:
    """Hash the weight files and write the ``COMPLETE`` marker (the last file of a checkpoint)."""
    files = weight_files(folder)
    if not files:
        raise ValueError(f"checkpoint {folder} holds no .safetensors weights")
    hashes = {p.relative_to(folder).as_posix(): _sha256(p) for p in files}
    _write_json(folder / COMPLETE_NAME, {"format": FORMAT, "sha256": hashes})


def commit(tmp: Path, final: Path) -> Path:
    """Mark ``tmp`` complete and rename it to ``final`` (an existing ``final`` is replaced)."""
    write_complete(tmp)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def atomic_checkpoint(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it becomes ``final`` (see :func:`commit`), on an
    error it is removed."""
    final = Path(final)
    tmp = temp_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        commit(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify(folder: str | Path) -> Path:
    """``folder`` if it is a complete checkpoint whose weights match their recorded hashes; a
    ``ValueError`` saying what is wrong otherwise."""
    folder = Path(folder)

    def bad(why: str) -> ValueError:
        return ValueError(f"checkpoint {folder} is incomplete/corrupt: {why}")

    if not folder.is_dir():
        raise bad("no such folder")
    try:
        marker = json.loads((folder / COMPLETE_NAME).read_text(encoding="utf-8"))
        hashes = marker["sha256"]
        if not isinstance(hashes, dict) or not hashes:
            raise ValueError("no hashes")
    except FileNotFoundError:
        raise bad(f"no {COMPLETE_NAME} marker (the write did not finish)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise bad(f"unreadable {COMPLETE_NAME} marker ({exc})") from None
    for name, expected in hashes.items():
        path = folder / name
        if not path.is_file():
            raise bad(f"{name} is missing")
        if _sha256(path) != expected:
            raise bad(f"{name} does not match its sha256 (changed or truncated after it was written)")
    listed = {folder / name for name in hashes}
    stray = [p.relative_to(folder).as_posix() for p in weight_files(folder) if p not in listed]
    if stray:
        raise bad(f"weight files not in the marker: {', '.join(stray)}")
    for needed in ("config.json", STATE_NAME):
        if not (folder / needed).is_file():
            raise bad(f"{needed} is missing")
    return folder


def read_trainer_state(folder: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a verified checkpoint."""
    folder = verify(folder)
    try:
        state = json.loads((folder / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"checkpoint {folder} is incomplete/corrupt: unreadable {STATE_NAME} ({exc})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {folder} is incomplete/corrupt: {STATE_NAME} is not format {FORMAT}")
    return state


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    _write_json(folder / STATE_NAME, {"format": FORMAT, **state})

    return True


class CheckpointManager:
    """The checkpoints of one run under ``root``: save, find the newest good one, keep ``keep``."""

    def __init__(self, root: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.root / step_name(step)

    def steps(self) -> list[tuple[int, Path]]:
        """Every ``step-N`` folder (complete or not), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            m = _STEP_RE.match(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
        return sorted(found)

    def save(self, step: int, writer: Callable[[Path], Any]) -> Path:
        """``writer(final_path)`` writes the checkpoint atomically (``LearnerGroup.save_checkpoint``,
        or anything using :func:`atomic_checkpoint`); the result is verified, then old ones pruned."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(step)
        writer(final)
        verify(final)
        self.prune()
        return final

    def latest(self) -> Path | None:
        """The newest complete, verified checkpoint; broken ones are skipped with a warning."""
        for _, folder in reversed(self.steps()):
            try:
                return verify(folder)
            except ValueError as exc:
                log.warning("skipping %s", exc)
        return None

    def prune(self) -> list[Path]:
        """Keep the newest ``keep`` good checkpoints; remove older ones, broken ones older than the
        newest good one, and temporary folders of processes that no longer run. Returns the removed."""
        removed: list[Path] = []
        good: list[Path] = []
        newest_good_step: int | None = None
        for step, folder in reversed(self.steps()):
            try:
                verify(folder)
            except ValueError:
                if newest_good_step is not None and step < newest_good_step:
                    removed.append(folder)
                continue
            if newest_good_step is None:
                newest_good_step = step
            good.append(folder)
        removed.extend(good[self.keep :])
        if self.root.is_dir():
            for child in self.root.iterdir():
                m = _TMP_RE.match(child.name)
                if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
                    removed.append(child)
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        return removed
