"""The registry on Redis: runs, checkpoints and evaluations as JSON records with sorted-set indexes.

Keys (all under ``sftrl:``)::

    runs                     zset  run_id -> created (unix time)
    rundirs                  hash  run folder -> run_id
    run:<run>                json  RunRecord
    run:<run>:ckpts          zset  checkpoint_id -> step
    ckpt:<run@step>          json  CheckpointRecord
    evals                    zset  eval_id -> created
    eval:<id>                json  EvaluationRecord
    ckpt:<run@step>:evals    zset  eval_id -> created
    owner:<hash>:live        set   eval_id of the caller's queued and running evaluations

Multi-key writes go through one MULTI/EXEC transaction, so readers never see half a record; changes
to a record (a status, progress) are optimistic transactions (WATCH the key, re-read, write in
MULTI/EXEC, retry on a concurrent change), so two writers never lose each other's change. A finished
evaluation's record expires after ``eval_ttl_s`` (its index entries are dropped when found missing).
An active evaluation holds a lease (``lease_until``) that whoever runs it renews; one whose lease ran
out is marked failed ("lost") by the next reader of its owner's live set (:meth:`live_evaluations`).
A Redis that reached its ``maxmemory`` refuses writes: that surfaces as ``RegistryFull`` (a registry
trouble like a lost connection) saying what to do.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from sftrl.registry.records import (
    CheckpointRecord,
    EvaluationRecord,
    RunRecord,
    checkpoint_id,
    parse_checkpoint_ref,
    utc_now,
)

PREFIX = "sftrl:"
EVAL_TTL_S = 30 * 24 * 3600  # finished evaluations are kept a month
FINISHED = ("done", "failed", "cancelled")
ACTIVE = ("queued", "running")
R = TypeVar("R", RunRecord, EvaluationRecord)
# Registry failures surface as one of these (connection refused, reset, timeout, server errors).
REGISTRY_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown run, checkpoint or evaluation)."""


class RegistryFull(redis.RedisError):
    """Redis reached its memory limit: like a lost connection, a registry trouble (never a failed run,
    a 503 at the endpoint), with a message that says what to do."""


class Registry:
    def __init__(self, url: str, timeout_s: float = 5.0, eval_ttl_s: int = EVAL_TTL_S):
        self.url = url
        self.eval_ttl_s = eval_ttl_s
        # Short timeouts: a training run must never hang on its index (the files are the truth).
        self.redis = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------------

    def register_run(self, run: RunRecord) -> RunRecord:
        """Create or update a run; returns it as stored. A folder keeps the id it was first given; a
        run name already taken by another folder gets a suffix derived from its folder's path."""
        known = self.redis.hget(f"{PREFIX}rundirs", run.run_dir)
        run_id = known or run.run_id
        existing = self.get_run(run_id)
        if existing is not None and existing.run_dir != run.run_dir:
            run_id = f"{run.run_id}-{hashlib.sha1(run.run_dir.encode()).hexdigest()[:6]}"
            existing = self.get_run(run_id)
        update: dict[str, Any] = {"run_id": run_id, "updated": utc_now()}
        if existing is not None:
            update["created"] = existing.created
        run = run.model_copy(update=update)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}run:{run_id}", run.model_dump_json())
        pipe.hset(f"{PREFIX}rundirs", run.run_dir, run_id)
        pipe.zadd(f"{PREFIX}runs", {run_id: time.time()}, nx=True)
        _execute(pipe)
        return run

    def run_for_dir(self, run_dir: str) -> RunRecord | None:
        run_id = self.redis.hget(f"{PREFIX}rundirs", run_dir)
        return self.get_run(run_id) if run_id else None

    def set_run_status(self, run_id: str, status: str) -> None:
        self._modify(f"{PREFIX}run:{run_id}", RunRecord, lambda run: run.model_copy(
            update={"status": status, "updated": utc_now()}), f"unknown run {run_id!r}")  # fmt: skip

    def _modify(self, key: str, model: type[R], change: Callable[[R], R], missing: str,
                after: Callable[[Any, R], None] | None = None) -> R:  # fmt: skip
        """Read the record at ``key``, apply ``change`` and write it back atomically: WATCH, re-read,
        MULTI/EXEC, again if another writer changed the key in between (``after`` adds writes)."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if not raw:
                        raise RegistryError(missing)
                    record = change(model.model_validate_json(raw))
                    pipe.multi()
                    pipe.set(key, record.model_dump_json())
                    if after is not None:
                        after(pipe, record)
                    _execute(pipe)
                    return record
                except redis.WatchError:
                    continue

    def get_run(self, run_id: str) -> RunRecord | None:
        raw = self.redis.get(f"{PREFIX}run:{run_id}")
        return RunRecord.model_validate_json(raw) if raw else None

    def list_runs(self) -> list[RunRecord]:
        ids = self.redis.zrange(f"{PREFIX}runs", 0, -1)
        raws = self.redis.mget([f"{PREFIX}run:{i}" for i in ids]) if ids else []
        return [RunRecord.model_validate_json(r) for r in raws if r]

    def delete_run(self, run_id: str) -> None:
        ckpts = self.redis.zrange(f"{PREFIX}run:{run_id}:ckpts", 0, -1)
        pipe = self.redis.pipeline(transaction=True)
        for cid in ckpts:
            pipe.delete(f"{PREFIX}ckpt:{cid}")
        run = self.get_run(run_id)
        if run is not None:
            pipe.hdel(f"{PREFIX}rundirs", run.run_dir)
        pipe.delete(f"{PREFIX}run:{run_id}", f"{PREFIX}run:{run_id}:ckpts")
        pipe.zrem(f"{PREFIX}runs", run_id)
        _execute(pipe)

    # -- checkpoints --------------------------------------------------------------------------------

    def record_checkpoint(self, ckpt: CheckpointRecord) -> None:
        if ckpt.checkpoint_id != checkpoint_id(ckpt.run_id, ckpt.step):
            raise RegistryError(
                f"checkpoint id {ckpt.checkpoint_id!r} does not match {ckpt.run_id}@{ckpt.step}"
            )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}ckpt:{ckpt.checkpoint_id}", ckpt.model_dump_json())
        pipe.zadd(f"{PREFIX}run:{ckpt.run_id}:ckpts", {ckpt.checkpoint_id: ckpt.step})
        _execute(pipe)

    def forget_checkpoint(self, cid: str) -> None:
        run_id, _ = parse_checkpoint_ref(cid)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(f"{PREFIX}ckpt:{cid}")
        pipe.zrem(f"{PREFIX}run:{run_id}:ckpts", cid)
        _execute(pipe)

    def list_checkpoints(self, run_id: str | None = None) -> list[CheckpointRecord]:
        runs = [run_id] if run_id else self.redis.zrange(f"{PREFIX}runs", 0, -1)
        ids = [cid for r in runs for cid in self.redis.zrange(f"{PREFIX}run:{r}:ckpts", 0, -1)]
        raws = self.redis.mget([f"{PREFIX}ckpt:{c}" for c in ids]) if ids else []
        return [CheckpointRecord.model_validate_json(r) for r in raws if r]

    def resolve_checkpoint(self, ref: str) -> CheckpointRecord:
        """``RUN@STEP``, ``RUN@latest`` or ``RUN`` -> its record; RegistryError when unknown."""
        try:
            run_id, step = parse_checkpoint_ref(ref)
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        if step is None:
            latest = self.redis.zrange(f"{PREFIX}run:{run_id}:ckpts", -1, -1)
            if not latest:
                raise RegistryError(f"run {run_id!r} has no registered checkpoint")
            ref = latest[0]
        raw = self.redis.get(f"{PREFIX}ckpt:{checkpoint_id(run_id, step) if step is not None else ref}")
        if not raw:
            raise RegistryError(f"unknown checkpoint {ref!r} (see `sftrl checkpoints {run_id}`)")
        return CheckpointRecord.model_validate_json(raw)

    # -- evaluations --------------------------------------------------------------------------------

    def save_evaluation(self, ev: EvaluationRecord) -> None:
        ev = ev.model_copy(update={"updated": utc_now()})
        now = time.time()
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}eval:{ev.eval_id}", ev.model_dump_json())
        pipe.zadd(f"{PREFIX}evals", {ev.eval_id: now}, nx=True)
        pipe.zadd(f"{PREFIX}ckpt:{ev.checkpoint_id}:evals", {ev.eval_id: now}, nx=True)
        self._expire_finished(pipe, ev)
        _execute(pipe)

    def _expire_finished(self, pipe: Any, ev: EvaluationRecord) -> None:
        """Keep the owner's live set and the record's expiry in step with its status."""
        if ev.status in FINISHED:
            pipe.expire(f"{PREFIX}eval:{ev.eval_id}", self.eval_ttl_s)
            if ev.owner:
                pipe.srem(f"{PREFIX}owner:{ev.owner}:live", ev.eval_id)
        elif ev.owner:
            pipe.sadd(f"{PREFIX}owner:{ev.owner}:live", ev.eval_id)

    def finish_evaluation(self, eval_id: str, **changes: Any) -> EvaluationRecord:
        """Apply ``changes`` (a final status, metrics, an error) unless the evaluation already ended
        (cancelled, or marked lost): the first end wins."""

        def change(ev: EvaluationRecord) -> EvaluationRecord:
            if ev.status in FINISHED:
                return ev
            return EvaluationRecord.model_validate({**ev.model_dump(), **changes, "updated": utc_now()})

        return self._modify(f"{PREFIX}eval:{eval_id}", EvaluationRecord, change,
                            f"unknown evaluation {eval_id!r}", after=self._expire_finished)  # fmt: skip

    def renew_lease(self, eval_id: str, seconds: float) -> EvaluationRecord:
        """Hold an active evaluation's lease ``seconds`` longer; an ended one is returned unchanged
        (its runner sees it was cancelled or lost)."""
        return self.finish_evaluation(eval_id, lease_until=time.time() + seconds)

    def live_evaluations(self, owner: str) -> list[EvaluationRecord]:
        """``owner``'s queued and running evaluations; any whose lease ran out is marked failed
        ("lost") on the way and left out."""
        key = f"{PREFIX}owner:{owner}:live"
        ids = sorted(self.redis.smembers(key))
        raws = self.redis.mget([f"{PREFIX}eval:{i}" for i in ids]) if ids else []
        live = []
        for eval_id, raw in zip(ids, raws, strict=True):
            ev = EvaluationRecord.model_validate_json(raw) if raw else None
            if ev is None or ev.status in FINISHED:
                self.redis.srem(key, eval_id)
            elif 0 < ev.lease_until < time.time() and self._mark_lost(eval_id).status in FINISHED:
                continue
            else:
                live.append(ev)
        return live

    def _mark_lost(self, eval_id: str) -> EvaluationRecord:
        """Fail an active evaluation whose lease ran out (checked again inside the transaction, so a
        renewal that just landed wins)."""

        def change(ev: EvaluationRecord) -> EvaluationRecord:
            if ev.status in FINISHED or not 0 < ev.lease_until < time.time():
                return ev
            error = "lost: whoever ran it stopped renewing its lease (a replica died or was stopped)"
            return ev.model_copy(update={"status": "failed", "error": error, "updated": utc_now()})

        return self._modify(f"{PREFIX}eval:{eval_id}", EvaluationRecord, change,
                            f"unknown evaluation {eval_id!r}", after=self._expire_finished)  # fmt: skip

    def update_evaluation(self, eval_id: str, **changes: Any) -> EvaluationRecord:
        def change(ev: EvaluationRecord) -> EvaluationRecord:
            return EvaluationRecord.model_validate({**ev.model_dump(), **changes, "updated": utc_now()})

        return self._modify(f"{PREFIX}eval:{eval_id}", EvaluationRecord, change,
                            f"unknown evaluation {eval_id!r}", after=self._expire_finished)  # fmt: skip

    def get_evaluation(self, eval_id: str) -> EvaluationRecord | None:
        raw = self.redis.get(f"{PREFIX}eval:{eval_id}")
        return EvaluationRecord.model_validate_json(raw) if raw else None

    def list_evaluations(self, checkpoint: str | None = None) -> list[EvaluationRecord]:
        key = f"{PREFIX}ckpt:{checkpoint}:evals" if checkpoint else f"{PREFIX}evals"
        ids = self.redis.zrange(key, 0, -1)
        raws = self.redis.mget([f"{PREFIX}eval:{i}" for i in ids]) if ids else []
        expired = [i for i, r in zip(ids, raws, strict=True) if not r]
        if expired:  # records that expired: their index entries go too
            self.redis.zrem(key, *expired)
        return [EvaluationRecord.model_validate_json(r) for r in raws if r]


def _execute(pipe: Any) -> Any:
    """``pipe.execute()``, with a Redis that reached its memory limit said in words."""
    try:
        return pipe.execute()
    except redis.ResponseError as exc:  # redis-py names it OutOfMemoryError; older ones leave "OOM ..."
        if type(exc).__name__ == "OutOfMemoryError" or str(exc).startswith("OOM"):
            raise RegistryFull(
                "the registry's Redis is full (maxmemory reached): finished evaluations expire on their "
                "own; raise maxmemory, or drop runs with `sftrl registry resync --prune`"
            ) from None
        raise
