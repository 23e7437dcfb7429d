"""Keep the registry true to the run folders, which are the truth.

A run folder (``<output_dir>/<run_name>/``) holds ``resolved_config.yaml``, ``metrics.jsonl`` and
``checkpoints/step-*/``. ``resync`` rebuilds the registry's records of runs from their folders: every
verified checkpoint is (re-)registered with the evaluation metrics logged at its step, and records
of checkpoints that are gone (pruned, or corrupt) are dropped. The training loop writes through
:class:`RunRegistrar`, which survives a lost Redis connection and resyncs once it is back, and renews
its run's lease from a heartbeat thread, so a driver killed without a word shows as "lost".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sftrl.checkpoint import CheckpointManager, VerifiedCache, checkpoint_roots, read_trainer_state
from sftrl.config import RESOLVED_CONFIG_NAME
from sftrl.files import read_bounded
from sftrl.registry.records import CheckpointRecord, RunRecord, checkpoint_id
from sftrl.registry.store import REGISTRY_ERRORS, Registry, RegistryError

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0  # how often a training driver renews its run's lease
LEASE_BEATS = 3  # the lease lasts this many heartbeats: a run is lost only after several missed ones
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a resolved config is kilobytes


def eval_metrics_by_step(run_dir: Path) -> dict[int, dict[str, float]]:
    """The last evaluation logged at each global step (``metrics.jsonl``)."""
    out: dict[int, dict[str, float]] = {}
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return out
    with path.open(encoding="utf-8", errors="replace") as lines:  # line by line: it grows with the run
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if isinstance(record, dict) and record.get("kind") == "eval":
                out[int(record.get("global_step", 0))] = {
                    k: float(v)
                    for k, v in record.items()
                    if "/" in k and isinstance(v, (int, float)) and not isinstance(v, bool)
                }
    return out


def checkpoint_record(
    run_id: str, folder: Path, metrics: dict[str, float] | None = None, cache: VerifiedCache | None = None
) -> CheckpointRecord:
    """The record of one verified checkpoint folder (ValueError when it is incomplete or corrupt);
    ``cache``: hashed once per process."""
    extra = read_trainer_state(folder, cache).get("extra", {})
    step = int(extra.get("global_step", 0))
    return CheckpointRecord(
        checkpoint_id=checkpoint_id(run_id, step),
        run_id=run_id,
        step=step,
        path=str(folder.resolve()),
        stage=str(extra.get("stage_name", "")),
        stage_index=int(extra.get("stage_index", 0)),
        stage_step=int(extra.get("stage_step", 0)),
        final=bool(extra.get("stage_final", False)),
        flops=float(extra.get("flops", 0.0)),
        metrics=metrics or {},
    )


def read_run(
    run_dir: Path, cache: VerifiedCache | None = None
) -> tuple[RunRecord, list[tuple[Path, CheckpointRecord]], list[str]]:
    """A run folder's record, its verified checkpoints (folder, record), and why any was skipped."""
    raw = read_bounded(run_dir / RESOLVED_CONFIG_NAME, "run config", MAX_CONFIG_BYTES)
    config = yaml.safe_load(raw.decode("utf-8", "replace")) or {}
    run_id = str(config.get("run_name") or run_dir.name)
    evals = eval_metrics_by_step(run_dir)
    checkpoints, skipped = [], []
    for _, folder in CheckpointManager(run_dir / "checkpoints").steps():
        try:
            record = checkpoint_record(run_id, folder, cache=cache)
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        checkpoints.append((folder, record.model_copy(update={"metrics": evals.get(record.step, {})})))
    last = checkpoints[-1][1] if checkpoints else None
    stages = config.get("stages") or []
    finished = last is not None and last.final and last.stage_index == len(stages) - 1
    run = RunRecord(
        run_id=run_id,
        run_dir=str(run_dir.resolve()),
        status="finished" if finished else "interrupted",
        model=str(config.get("model", "")),
        config=config,
    )
    return run, checkpoints, skipped


@dataclass
class SyncReport:
    runs: list[str] = field(default_factory=list)
    checkpoints: int = 0
    dropped: list[str] = field(default_factory=list)  # registry records whose folder is gone
    skipped: list[str] = field(default_factory=list)  # folders that are not valid checkpoints / runs
    unseen: list[str] = field(default_factory=list)  # registered runs whose folder is not visible here (kept)
    # registered runs whose folder lies under no root: kept, never opened
    outside: list[str] = field(default_factory=list)


def find_run_dirs(root: Path) -> list[Path]:
    """``root`` itself if it is a run folder, else the run folders directly below it."""
    if (root / RESOLVED_CONFIG_NAME).is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / RESOLVED_CONFIG_NAME).is_file())


def resync_run(
    registry: Registry, run_dir: Path, report: SyncReport | None = None, cache: VerifiedCache | None = None
) -> SyncReport:
    report = report or SyncReport()
    try:
        run, checkpoints, skipped = read_run(run_dir, cache)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        report.skipped.append(f"{run_dir}: not a readable run folder ({exc})")
        return report
    existing = registry.run_for_dir(run.run_dir)  # a running one whose lease ran out reads as lost
    if existing is not None and existing.status in ("running", "failed", "lost") and run.status != "finished":
        # what the folder cannot tell, kept: a live run keeps its lease, so it is not lost by this
        run = run.model_copy(update={"status": existing.status, "lease_until": existing.lease_until})
    run = registry.register_run(run)
    keep = set()
    for _, record in checkpoints:
        record = record.model_copy(
            update={"run_id": run.run_id, "checkpoint_id": checkpoint_id(run.run_id, record.step)}
        )
        registry.record_checkpoint(record)
        keep.add(record.checkpoint_id)
    for old in registry.list_checkpoints(run.run_id):
        if old.checkpoint_id not in keep:
            registry.forget_checkpoint(old.checkpoint_id)
            report.dropped.append(old.checkpoint_id)
    report.runs.append(run.run_id)
    report.checkpoints += len(checkpoints)
    report.skipped.extend(skipped)
    return report


def resync(registry: Registry, roots: list[Path], prune: bool = False) -> SyncReport:
    """Resync every run under ``roots`` plus every run the registry already knows whose folder lies
    under ``roots`` or the checkpoint roots. A registered run whose folder cannot be seen here
    (another machine's disk, an unmounted volume) keeps its records unless ``prune``: the index is
    never wiped for what this machine cannot see."""
    report = SyncReport()
    dirs: dict[Path, None] = {}
    for root in roots:
        dirs.update(dict.fromkeys(p.resolve() for p in find_run_dirs(Path(root))))
    # a record names its folder, and whoever can write Redis could name any: only folders under the
    # roots given or the checkpoint roots are opened
    allowed = [Path(root).resolve() for root in roots] + checkpoint_roots()
    for run in registry.list_runs():
        folder = Path(run.run_dir).expanduser().resolve()
        if not any(folder.is_relative_to(root) for root in allowed):
            report.outside.append(f"{run.run_id} ({run.run_dir})")
        elif (folder / RESOLVED_CONFIG_NAME).is_file():
            dirs.setdefault(folder, None)
        elif prune:  # the whole run folder is gone, and the caller says so
            registry.delete_run(run.run_id)
            report.dropped.append(run.run_id)
        else:
            report.unseen.append(f"{run.run_id} ({run.run_dir})")
    for folder in dirs:
        resync_run(registry, folder, report)
    return report


class RunRegistrar:
    """The training loop's writer: never fails the run over the registry, catches up when it can.

    The run id is the registry's (``register_run`` may suffix a run name another folder holds). A
    thread renews the run's lease every ``heartbeat_s`` (the lease lasts :data:`LEASE_BEATS` of them):
    a driver killed with SIGKILL stops renewing, and readers then show the run "lost". Every call
    holds one lock, so the heartbeat and the loop never interleave a catch-up."""

    def __init__(
        self, registry: Registry, run: RunRecord, console: Any = None, heartbeat_s: float = HEARTBEAT_S
    ):
        self.registry = registry
        self.run = run
        self.console = console
        self.dirty = False
        self.heartbeat_s = heartbeat_s
        self.lease_s = heartbeat_s * LEASE_BEATS
        # the catch-up re-reads every retained checkpoint: each is hashed once per run, not per call
        self.verified = VerifiedCache()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._call(self._register)
        self._beat = threading.Thread(target=self._heartbeat, name="run-heartbeat", daemon=True)
        self._beat.start()

    def _register(self, registry: Registry) -> None:
        """(Re-)register this run as running, leased: the folder's id is kept, or one is given. Records
        of checkpoints the folder no longer holds go (a run started over has none of its old ones)."""
        leased = self.run.model_copy(update={"status": "running", "lease_until": time.time() + self.lease_s})
        self.run = registry.register_run(leased)
        held = {
            str(folder.resolve())
            for _, folder in CheckpointManager(Path(self.run.run_dir) / "checkpoints").steps()
        }
        for old in registry.list_checkpoints(self.run_id):
            if old.path not in held:  # compared, never opened: the record's path is not trusted
                registry.forget_checkpoint(old.checkpoint_id)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def _warn(self, message: str) -> None:
        if self.console is not None:
            self.console.print(f"[yellow]registry: {message}[/]", highlight=False)
        else:
            log.warning("registry: %s", message)

    def _call(self, fn: Callable[[Registry], Any]) -> None:
        """Run ``fn(registry)``; connection trouble is reported once and repaired on the next call."""
        with self._lock:
            try:
                if self.dirty:
                    self._catch_up()
                fn(self.registry)
            except REGISTRY_ERRORS as exc:
                if not self.dirty:
                    self._warn(
                        f"unreachable ({type(exc).__name__}: {exc}); training goes on, checkpoints are on disk"
                    )
                self.dirty = True

    def _catch_up(self) -> None:
        """Missed writes: rebuild this run's records from its folder, once Redis answers."""
        self.registry.ping()  # still down: fail here, before reading the run folder again
        resync_run(self.registry, Path(self.run.run_dir), cache=self.verified)
        # the id the registry gave this folder (suffixed if another folder holds the name), so that
        # every later write lands on this run's records, never on another run's; running and leased
        self._register(self.registry)
        self.dirty = False
        self._warn("connection back; records re-synced from the run folder")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._call(lambda r: r.renew_run_lease(self.run_id, self.lease_s))
            except RegistryError as exc:  # the record was deleted under the run: said, never fatal
                log.warning("registry: heartbeat of %s: %s", self.run_id, exc)

    def close(self) -> None:
        """Stop the heartbeat (the run's lease then runs out unless its status is set)."""
        self._stop.set()
        if self._beat is not threading.current_thread():
            self._beat.join(timeout=self.heartbeat_s + 10)

    def checkpoint(self, folder: Path, metrics: dict[str, float] | None) -> None:
        # hashed before the lock is taken: the heartbeat goes on while a large checkpoint is read, and a
        # catch-up later finds it in the cache
        record = checkpoint_record(self.run_id, folder, metrics, self.verified)

        def write(registry: Registry) -> None:  # under the id the run has by then (a catch-up may suffix it)
            cid = checkpoint_id(self.run_id, record.step)
            registry.record_checkpoint(
                record.model_copy(update={"run_id": self.run_id, "checkpoint_id": cid})
            )

        self._call(write)

    def forget(self, step: int) -> None:
        self._call(lambda r: r.forget_checkpoint(checkpoint_id(self.run_id, step)))

    def finish(self, status: str) -> None:
        self.close()  # first: no heartbeat lands after the final status
        self._call(lambda r: r.set_run_status(self.run_id, status))
        if self.dirty:
            self._warn("still out of date: run `sftrl registry resync` once Redis is reachable")
