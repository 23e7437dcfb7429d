"""The registry on Redis: runs, checkpoints and evaluations as JSON records with sorted-set indexes.

Keys (all under ``sftrl:``)::

    runs                     zset  run_id -> created (unix time)
    rundirs                  hash  run folder -> run_id
    run:<run>                json  RunRecord
    run:<run>:ckpts          zset  checkpoint_id -> step
    ckpt:<run@step>          json  CheckpointRecord
    evals                    zset  eval_id -> when its record may expire (+inf while active)
    eval:<id>                json  EvaluationRecord
    ckpt:<run@step>:evals    zset  eval_id -> when its record may expire (+inf while active)
    owner:<hash>:live        set   eval_id of the caller's queued and running evaluations

Multi-key writes go through one MULTI/EXEC transaction, so readers never see half a record; a write
that depends on what it read (a record's status or progress, a run's id, a run's deletion) is an
optimistic transaction (WATCH the keys, read, write in MULTI/EXEC, retry on a concurrent change), so
two writers never lose each other's change. A finished evaluation's record expires after
``eval_ttl_s``; every write of an evaluation also trims the entries of expired records from both
indexes and sets each index key to expire with its last entry, so index entries never outlive their
records (a token holder's flood of evaluations leaves nothing behind).
An active evaluation holds a lease (``lease_until``) that whoever runs it renews; one whose lease ran
out is marked failed ("lost") by the next reader of its owner's live set (:meth:`live_evaluations`).
A running run holds one too, renewed by its driver's heartbeat; one whose lease ran out is marked
"lost" by the next reader of its record (:meth:`get_run`, :meth:`list_runs`), and comes back to
"running" if its driver renews it after all (it was only out of reach).
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
RUNDIRS = f"{PREFIX}rundirs"
EVAL_TTL_S = 30 * 24 * 3600  # finished evaluations are kept a month
FINISHED = ("done", "failed", "cancelled")
RUN_ENDED = ("finished", "failed", "interrupted")  # a run's statuses that no heartbeat changes
ACTIVE = ("queued", "running")
R = TypeVar("R", RunRecord, EvaluationRecord)
T = TypeVar("T")
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
        self.eval_ttl_s = max(1, int(eval_ttl_s))  # EXPIRE 0 would delete a record at once
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
        run name already taken by another folder gets a suffix derived from its folder's path. The id
        is chosen from what was read, so a concurrent registration retries it (two folders never
        share an id, one never overwrites the other's record)."""

        def attempt(pipe: Any) -> RunRecord:
            pipe.watch(RUNDIRS)
            run_id = pipe.hget(RUNDIRS, run.run_dir) or run.run_id
            existing = _watched_run(pipe, run_id)
            if existing is not None and existing.run_dir != run.run_dir:
                run_id = f"{run.run_id}-{hashlib.sha1(run.run_dir.encode()).hexdigest()[:6]}"
                existing = _watched_run(pipe, run_id)
            update: dict[str, Any] = {"run_id": run_id, "updated": utc_now()}
            if existing is not None:
                update["created"] = existing.created
            stored = run.model_copy(update=update)
            pipe.multi()
            pipe.set(f"{PREFIX}run:{run_id}", stored.model_dump_json())
            pipe.hset(RUNDIRS, run.run_dir, run_id)
            pipe.zadd(f"{PREFIX}runs", {run_id: time.time()}, nx=True)
            return stored

        return self._transact(attempt)

    def run_for_dir(self, run_dir: str) -> RunRecord | None:
        run_id = self.redis.hget(RUNDIRS, run_dir)
        return self.get_run(run_id) if run_id else None

    def set_run_status(self, run_id: str, status: str) -> None:
        self._modify(f"{PREFIX}run:{run_id}", RunRecord, lambda run: run.model_copy(
            update={"status": status, "updated": utc_now()}), f"unknown run {run_id!r}")  # fmt: skip

    def _modify(self, key: str, model: type[R], change: Callable[[R], R], missing: str,
                after: Callable[[Any, R], None] | None = None) -> R:  # fmt: skip
        """Read the record at ``key``, apply ``change`` and write it back atomically (``after`` adds
        writes), again if another writer changed the key in between."""

        def attempt(pipe: Any) -> R:
            pipe.watch(key)
            raw = pipe.get(key)
            if not raw:
                raise RegistryError(missing)
            record = change(model.model_validate_json(raw))
            pipe.multi()
            pipe.set(key, record.model_dump_json())
            if after is not None:
                after(pipe, record)
            return record

        return self._transact(attempt)

    def _transact(self, attempt: Callable[[Any], T]) -> T:
        """Run ``attempt(pipe)`` (WATCH and reads, then ``pipe.multi()`` and writes) and EXEC it; from
        the start again when a watched key changed in between, so no concurrent write is lost."""
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    result = attempt(pipe)
                    _execute(pipe)
                    return result
                except redis.WatchError:
                    continue

    def get_run(self, run_id: str) -> RunRecord | None:
        """A run's record; a running one whose lease ran out is marked lost on the way."""
        raw = self.redis.get(f"{PREFIX}run:{run_id}")
        return self._unless_lost(RunRecord.model_validate_json(raw)) if raw else None

    def list_runs(self) -> list[RunRecord]:
        """Every run's record, oldest first; running ones whose lease ran out are marked lost."""
        ids = self.redis.zrange(f"{PREFIX}runs", 0, -1)
        raws = self.redis.mget([f"{PREFIX}run:{i}" for i in ids]) if ids else []
        runs = (self._unless_lost(RunRecord.model_validate_json(r)) for r in raws if r)
        return [run for run in runs if run is not None]

    def renew_run_lease(self, run_id: str, seconds: float) -> RunRecord:
        """A running run's heartbeat: hold its lease ``seconds`` longer. A run marked lost is running
        again (its driver was only out of reach; this renewal shows it lives); an ended run is
        returned unchanged (a late heartbeat never undoes its end)."""

        def change(run: RunRecord) -> RunRecord:
            if run.status in RUN_ENDED:
                return run
            return run.model_copy(update={"status": "running", "lease_until": time.time() + seconds,
                                          "updated": utc_now()})  # fmt: skip

        return self._modify(f"{PREFIX}run:{run_id}", RunRecord, change, f"unknown run {run_id!r}")

    def _unless_lost(self, run: RunRecord) -> RunRecord | None:
        """``run``, marked lost first if it is running and its lease ran out (None: deleted meanwhile)."""
        if not (run.status == "running" and _lease_ran_out(run.lease_until)):
            return run

        def change(current: RunRecord) -> RunRecord:
            # checked again inside the transaction: a renewal that just landed wins
            if current.status != "running" or not _lease_ran_out(current.lease_until):
                return current
            return current.model_copy(update={"status": "lost", "updated": utc_now()})

        try:
            return self._modify(f"{PREFIX}run:{run.run_id}", RunRecord, change, f"unknown run {run.run_id!r}")
        except RegistryError:
            return None

    def delete_run(self, run_id: str) -> None:
        """Drop a run, its checkpoints and its folder's entry. A checkpoint recorded (or the run
        registered) while this reads makes it start over, so no checkpoint record outlives its run."""
        run_key, ckpts_key = f"{PREFIX}run:{run_id}", f"{PREFIX}run:{run_id}:ckpts"

        def attempt(pipe: Any) -> None:
            pipe.watch(run_key, ckpts_key, RUNDIRS)
            ckpts = pipe.zrange(ckpts_key, 0, -1)
            run = _watched_run(pipe, run_id)
            # the folder's entry only if it still names this run (a folder re-registered under
            # another id keeps it)
            owned = run is not None and pipe.hget(RUNDIRS, run.run_dir) == run_id
            pipe.multi()
            if ckpts:
                pipe.delete(*(f"{PREFIX}ckpt:{cid}" for cid in ckpts))
            if owned:
                pipe.hdel(RUNDIRS, run.run_dir)
            pipe.delete(run_key, ckpts_key)
            pipe.zrem(f"{PREFIX}runs", run_id)

        self._transact(attempt)

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
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}eval:{ev.eval_id}", ev.model_dump_json())
        self._after_write(pipe, ev)
        _execute(pipe)

    def _after_write(self, pipe: Any, ev: EvaluationRecord) -> None:
        """Keep the record's expiry, the owner's live set and both indexes in step with its status
        (queued after every write of the record)."""
        finished = ev.status in FINISHED
        if finished:
            pipe.expire(f"{PREFIX}eval:{ev.eval_id}", self.eval_ttl_s)
        if ev.owner:
            live = f"{PREFIX}owner:{ev.owner}:live"
            if finished:
                pipe.srem(live, ev.eval_id)
            else:
                pipe.sadd(live, ev.eval_id)
        # after the record's EXPIRE: the entry's time (the server's clock) is never before the record's
        indexes = (f"{PREFIX}evals", f"{PREFIX}ckpt:{ev.checkpoint_id}:evals")
        ttl = str(self.eval_ttl_s) if finished else "inf"
        pipe.eval(_INDEX_SCRIPT, len(indexes), *indexes, ev.eval_id, ttl)

    def finish_evaluation(self, eval_id: str, **changes: Any) -> EvaluationRecord:
        """Apply ``changes`` (a final status, metrics, an error) unless the evaluation already ended
        (cancelled, or marked lost): the first end wins."""

        def change(ev: EvaluationRecord) -> EvaluationRecord:
            if ev.status in FINISHED:
                return ev
            return EvaluationRecord.model_validate({**ev.model_dump(), **changes, "updated": utc_now()})

        return self._modify(f"{PREFIX}eval:{eval_id}", EvaluationRecord, change,
                            f"unknown evaluation {eval_id!r}", after=self._after_write)  # fmt: skip

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
                            f"unknown evaluation {eval_id!r}", after=self._after_write)  # fmt: skip

    def update_evaluation(self, eval_id: str, **changes: Any) -> EvaluationRecord:
        def change(ev: EvaluationRecord) -> EvaluationRecord:
            return EvaluationRecord.model_validate({**ev.model_dump(), **changes, "updated": utc_now()})

        return self._modify(f"{PREFIX}eval:{eval_id}", EvaluationRecord, change,
                            f"unknown evaluation {eval_id!r}", after=self._after_write)  # fmt: skip

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
        # oldest first (the index is ordered by expiry, not by creation)
        return sorted((EvaluationRecord.model_validate_json(r) for r in raws if r), key=lambda e: e.created)


# Index an evaluation (ARGV[1]) in each sorted set of KEYS, scored by when its record may expire: the
# server's now + ARGV[2] seconds, or never ("inf") while it is active. Entries whose time passed go;
# each key expires with its latest entry, or is kept while it holds an active one.
_INDEX_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end -- writes after TIME (Redis < 5)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local score = ARGV[2]
if score ~= 'inf' then score = string.format('%.6f', now + tonumber(score)) end
for _, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.6f', now))
  redis.call('ZADD', key, score, ARGV[1])
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
  if last == 'inf' then
    redis.call('PERSIST', key)
  else
    redis.call('PEXPIREAT', key, math.ceil(tonumber(last) * 1000))
  end
end
"""


def _lease_ran_out(lease_until: float) -> bool:
    """Whether a lease was held (0: never; records written before leases) and its time has passed."""
    return 0 < lease_until < time.time()


def _watched_run(pipe: Any, run_id: str) -> RunRecord | None:
    """WATCH a run's record and read it (inside an optimistic transaction, before ``multi()``)."""
    key = f"{PREFIX}run:{run_id}"
    pipe.watch(key)
    raw = pipe.get(key)
    return RunRecord.model_validate_json(raw) if raw else None


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
