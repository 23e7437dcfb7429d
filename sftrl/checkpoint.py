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
- ``COMPLETE``, written last: the sha256 and size of every other file of the checkpoint (weights,
  optimizer shards, which DeepSpeed loads with pickle, trainer state, tokenizer).

A checkpoint is written into ``.step-000042.tmp-<token>``, every file and folder fsynced, and renamed
into place with ``os.replace`` once complete, so a crash mid-write leaves only a hidden temporary
folder and the last good checkpoint stays the newest; an older checkpoint is pruned only after the
new one is durable. :meth:`CheckpointManager.latest` re-hashes every file and skips (with a warning
naming it) any checkpoint that is incomplete or whose files changed; pruning checks names and sizes
only. A crash between the two renames of a replaced checkpoint leaves ``.step-N.old-<token>``: it is
put back when ``step-N`` is missing, removed otherwise.

The ``<token>`` is the writing process's host, pid and a random part (:func:`writer_token`): unique
across nodes and restarts, it never says whether its writer still runs (the pid may be another
machine's, or reused). Leftovers are therefore cleaned by the run folder's one writer (the run's
driver, whose learner writes only inside :meth:`CheckpointManager.save`) when it starts and around
its own saves, never by a reader: :meth:`CheckpointManager.steps` and :func:`verify` change nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftrl.files import fsync_path, read_bounded, write_atomic

log = logging.getLogger(__name__)

COMPLETE_NAME = "COMPLETE"
STATE_NAME = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"
VALUE_HEAD_DIR = "value_head"
FORMAT = 1  # trainer_state.json
MARKER_FORMAT = 2  # COMPLETE: every file with its size (format 1 listed the weights only)
MAX_JSON_BYTES = 16 * 1024 * 1024  # COMPLETE and trainer_state.json are kilobytes: read no more
_STEP_RE = re.compile(r"step-(\d+)")
# temporaries: ``<token>`` of :func:`writer_token`, or a bare pid (what earlier versions wrote)
_TMP_RE = re.compile(r"\.step-\d+\.tmp-[A-Za-z0-9._-]+")
_OLD_RE = re.compile(r"\.(step-\d+)\.old-[A-Za-z0-9._-]+")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(folder: Path) -> int | None:
    """The step of a ``step-N`` folder, None for any other name."""
    m = _STEP_RE.fullmatch(folder.name)
    return int(m.group(1)) if m else None


def writer_token() -> str:
    """A name part no other write shares: host, pid and 32 random bits (a pid alone repeats across
    nodes, containers and restarts)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def temp_path(final: Path, pid: int | None = None) -> Path:
    """Where ``final`` is written before it is renamed into place (``pid``: a name of the form earlier
    versions wrote, ``.tmp-<pid>``)."""
    return final.parent / f".{final.name}.tmp-{pid if pid is not None else writer_token()}"


def weight_files(folder: Path) -> list[Path]:
    """The files whose hashes make a checkpoint's identity: policy and value-head weights."""
    files = sorted(folder.glob("*.safetensors")) + sorted((folder / VALUE_HEAD_DIR).glob("*.safetensors"))
    return files


def checkpoint_files(folder: Path) -> list[Path]:
    """Every file of a checkpoint but its ``COMPLETE`` marker, in a fixed order."""
    return sorted(p for p in folder.rglob("*") if p.name != COMPLETE_NAME and not p.is_dir())


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` (and ``folder`` itself) to disk."""
    for path in [*checkpoint_files(folder), *(folder / COMPLETE_NAME,)]:
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [folder]:
        fsync_path(sub)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def write_complete(folder: Path) -> None:
    """Hash every file and write the ``COMPLETE`` marker (the last file of a checkpoint)."""
    if not weight_files(folder):
        raise ValueError(f"checkpoint {folder} holds no .safetensors weights")
    files = checkpoint_files(folder)
    if any(p.is_symlink() or not p.is_file() for p in files):
        raise ValueError(f"checkpoint {folder} holds a link or special file")
    names = [p.relative_to(folder).as_posix() for p in files]
    _write_json(folder / COMPLETE_NAME, {"format": MARKER_FORMAT,
                                         "sha256": {n: _sha256(p) for n, p in zip(names, files, strict=True)},
                                         "bytes": {n: p.stat().st_size for n, p in zip(names, files, strict=True)}})  # fmt: skip


def commit(tmp: Path, final: Path) -> Path:
    """Mark ``tmp`` complete, flush it to disk and rename it to ``final`` (an existing ``final`` is
    replaced; see the module's note on ``.old`` folders)."""
    write_complete(tmp)
    _fsync_tree(tmp)
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{writer_token()}"
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(final.parent)  # the rename itself is durable before anything older is pruned
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


def verify(folder: str | Path, deep: bool = True) -> Path:
    """``folder`` if it is a complete checkpoint whose files match their recorded hashes (``deep``) or
    at least their names and sizes; a ``ValueError`` saying what is wrong otherwise."""
    folder = Path(folder)

    def bad(why: str) -> ValueError:
        return ValueError(f"checkpoint {folder} is incomplete/corrupt: {why}")

    if not folder.is_dir():
        raise bad("no such folder")
    try:
        marker = json.loads(read_bounded(folder / COMPLETE_NAME, COMPLETE_NAME, MAX_JSON_BYTES))
        hashes = marker["sha256"]
        if not isinstance(hashes, dict) or not hashes:
            raise ValueError("no hashes")
        sizes = marker.get("bytes") if marker.get("format") == MARKER_FORMAT else None
        if sizes is not None and not isinstance(sizes, dict):
            raise ValueError("bad sizes")
    except FileNotFoundError:
        raise bad(f"no {COMPLETE_NAME} marker (the write did not finish)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise bad(f"unreadable {COMPLETE_NAME} marker ({exc})") from None
    for name, expected in hashes.items():
        path = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not path.is_file() or path.is_symlink():
            raise bad(f"{name} is missing")
        if deep and _sha256(path) != expected:
            raise bad(f"{name} does not match its sha256 (changed or truncated after it was written)")
        if not deep and sizes is not None and path.stat().st_size != sizes.get(name):
            raise bad(f"{name} does not match its size (changed or truncated after it was written)")
    listed = {folder / name for name in hashes}
    present = checkpoint_files(folder) if sizes is not None else weight_files(folder)  # format 1: weights
    stray = [p.relative_to(folder).as_posix() for p in present if p not in listed]
    if stray:
        raise bad(f"files not in the marker: {', '.join(stray)}")
    for needed in ("config.json", STATE_NAME):
        if not (folder / needed).is_file():
            raise bad(f"{needed} is missing")
    return folder


ROOTS_ENV = "SFTRL_CHECKPOINT_ROOTS"


class UntrustedCheckpoint(ValueError):
    """A checkpoint path (read from the registry, which any holder of its credentials can write) that
    lies outside the configured checkpoint roots."""


def checkpoint_roots(given: Sequence[str | Path] | None = None) -> list[Path]:
    """The folders checkpoints may be loaded from: ``given``, else ``$SFTRL_CHECKPOINT_ROOTS`` (paths
    separated by ``os.pathsep``), else ``$SFTRL_HOME`` and the current folder (where ``sftrl train``
    writes ``runs/`` by default; the chart's pods have SFTRL_HOME on the shared volume)."""
    from sftrl.home import sftrl_home

    if given:
        chosen = [Path(p) for p in given]
    elif os.environ.get(ROOTS_ENV, "").strip():
        chosen = [Path(p) for p in os.environ[ROOTS_ENV].split(os.pathsep) if p.strip()]
    else:
        chosen = [sftrl_home(), Path.cwd()]
    return [p.expanduser().resolve() for p in chosen]


def trusted(folder: str | Path, roots: Sequence[Path], deep: bool = True) -> Path:
    """``folder`` with its links resolved, if it lies under one of ``roots`` and verifies
    (:func:`verify`); :class:`UntrustedCheckpoint` or ``ValueError`` otherwise."""
    real = Path(folder).expanduser().resolve()
    if not any(real.is_relative_to(root) for root in roots):
        raise UntrustedCheckpoint(
            f"checkpoint {folder} lies outside the checkpoint roots ({', '.join(map(str, roots))}); "
            f"set {ROOTS_ENV} or pass --checkpoint-root to allow its folder"
        )
    return verify(real, deep=deep)


class VerifiedCache:
    """What :func:`verify` said of each checkpoint this process has hashed, by folder and the identity
    of its ``COMPLETE`` marker (inode, size, mtime). The registry's catch-up after an outage reads every
    retained checkpoint again: with this it hashes only those it has not seen (a checkpoint replaced
    under the same name has a new marker, so it is hashed again). A hit still checks names and sizes."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[tuple[int, int, int], str | None]] = {}  # identity, error

    def verify(self, folder: str | Path) -> Path:
        folder = Path(folder)
        identity = _marker_identity(folder)
        seen = self._seen.get(folder)
        if identity is not None and seen is not None and seen[0] == identity:
            if seen[1] is not None:
                raise ValueError(seen[1])
            return verify(folder, deep=False)
        try:
            verify(folder)
        except ValueError as exc:
            if identity is not None:
                self._seen[folder] = (identity, str(exc))
            raise
        if identity is not None:
            self._seen[folder] = (identity, None)
        return folder


def _marker_identity(folder: Path) -> tuple[int, int, int] | None:
    """What tells one ``COMPLETE`` marker from a rewritten one; None when there is none."""
    try:
        st = (folder / COMPLETE_NAME).stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_trainer_state(folder: str | Path, cache: VerifiedCache | None = None) -> dict[str, Any]:
    """``trainer_state.json`` of a verified checkpoint (``cache``: verified once per process)."""
    folder = cache.verify(folder) if cache is not None else verify(folder)
    try:
        state = json.loads(read_bounded(folder / STATE_NAME, STATE_NAME, MAX_JSON_BYTES))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"checkpoint {folder} is incomplete/corrupt: unreadable {STATE_NAME} ({exc})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {folder} is incomplete/corrupt: {STATE_NAME} is not format {FORMAT}")
    return state


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    _write_json(folder / STATE_NAME, {"format": FORMAT, **state})


class CheckpointManager:
    """The checkpoints of one run under ``root``: save, find the newest good one, keep ``keep``.

    A run folder has one writer, the run's driver: :meth:`save`, :meth:`prune`, :meth:`latest` and
    :meth:`repair` are its calls, and they move or remove what a crashed writer left (no temporary
    folder of its own exists outside :meth:`save`). Readers (resync, the resume checks) call
    :meth:`steps` and :func:`verify`, which change nothing: a writer on another node may be between
    its two renames."""

    def __init__(self, root: str | Path, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep

    def path(self, step: int) -> Path:
        return self.root / step_name(step)

    def steps(self) -> list[tuple[int, Path]]:
        """Every ``step-N`` folder (complete or not), oldest first. Reads only."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            m = _STEP_RE.fullmatch(child.name)
            if m and child.is_dir():
                found.append((int(m.group(1)), child))
        return sorted(found)

    def repair(self) -> list[Path]:
        """The writer's clean-up of a crashed writer's leftovers: every ``.step-N.old-*`` is put back
        where ``step-N`` is missing and removed otherwise; every ``.step-N.tmp-*`` is removed (whatever
        pid or host it names: the only writer is the caller, between its saves). Returns the removed."""
        return self._put_back_replaced() + self._remove_temporaries()

    def _put_back_replaced(self) -> list[Path]:
        """``.step-N.old-*``: put back when ``step-N`` is missing, else removed (returned)."""
        removed = []
        for child in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            m = _OLD_RE.fullmatch(child.name)
            if not m:
                continue
            final = self.root / m.group(1)
            if final.exists():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
            else:
                os.replace(child, final)
                log.warning("put back %s (its replacement was interrupted)", final)
        return removed

    def _remove_temporaries(self) -> list[Path]:
        found = [c for c in self.root.iterdir() if _TMP_RE.fullmatch(c.name)] if self.root.is_dir() else []
        for child in found:
            shutil.rmtree(child, ignore_errors=True)
        return found

    def save(self, step: int, writer: Callable[[Path], Any]) -> Path:
        """``writer(final_path)`` writes the checkpoint atomically (``LearnerGroup.save_checkpoint``,
        or anything using :func:`atomic_checkpoint`); the result is verified, then old ones pruned."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.repair()  # a step-N moved aside by a crashed replacement is back before it is replaced
        final = self.path(step)
        writer(final)
        verify(final, deep=False)  # just hashed by the writer; names and sizes say it landed whole
        self.prune()
        return final

    def latest(self) -> Path | None:
        """The newest complete, verified checkpoint; broken ones are skipped with a warning. A
        checkpoint whose replacement was cut short is put back first (the writer's call: a resume)."""
        self._put_back_replaced()
        for _, folder in reversed(self.steps()):
            try:
                return verify(folder)
            except ValueError as exc:
                log.warning("skipping %s; trying the one before", exc)
        return None

    def prune(self) -> list[Path]:
        """Keep the newest ``keep`` good checkpoints; remove older ones, broken ones older than the
        newest good one, and a crashed writer's leftovers (:meth:`repair`). Returns the removed."""
        cleaned = self.repair()
        removed: list[Path] = []
        good: list[Path] = []
        newest_good_step: int | None = None
        for step, folder in reversed(self.steps()):
            try:
                verify(folder, deep=False)  # names and sizes: pruning must not re-read every optimizer shard
            except ValueError:
                if newest_good_step is not None and step < newest_good_step:
                    removed.append(folder)
                continue
            if newest_good_step is None:
                newest_good_step = step
            good.append(folder)
        removed.extend(good[self.keep :])
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        return cleaned + removed
