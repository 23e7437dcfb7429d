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

Multi-key writes go through one MULTI/EXEC transaction, so readers never see half a record.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

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
# Registry failures surface as one of these (connection refused, reset, timeout, server errors).
REGISTRY_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown run, checkpoint or evaluation)."""


class Registry:
    def __init__(self, url: str, timeout_s: float = 5.0):
        self.url = url
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
        pipe.execute()
        return run

    def run_for_dir(self, run_dir: str) -> RunRecord | None:
        run_id = self.redis.hget(f"{PREFIX}rundirs", run_dir)
        return self.get_run(run_id) if run_id else None

    def set_run_status(self, run_id: str, status: str) -> None:
        run = self.get_run(run_id)
        if run is None:
            raise RegistryError(f"unknown run {run_id!r}")
        run = run.model_copy(update={"status": status, "updated": utc_now()})
        self.redis.set(f"{PREFIX}run:{run_id}", run.model_dump_json())

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
        pipe.execute()

    # -- checkpoints --------------------------------------------------------------------------------

    def record_checkpoint(self, ckpt: CheckpointRecord) -> None:
        if ckpt.checkpoint_id != checkpoint_id(ckpt.run_id, ckpt.step):
            raise RegistryError(
                f"checkpoint id {ckpt.checkpoint_id!r} does not match {ckpt.run_id}@{ckpt.step}"
            )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}ckpt:{ckpt.checkpoint_id}", ckpt.model_dump_json())
        pipe.zadd(f"{PREFIX}run:{ckpt.run_id}:ckpts", {ckpt.checkpoint_id: ckpt.step})
        pipe.execute()

    def forget_checkpoint(self, cid: str) -> None:
        run_id, _ = parse_checkpoint_ref(cid)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(f"{PREFIX}ckpt:{cid}")
        pipe.zrem(f"{PREFIX}run:{run_id}:ckpts", cid)
        pipe.execute()

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
        pipe.execute()

    def update_evaluation(self, eval_id: str, **changes: Any) -> EvaluationRecord:
        ev = self.get_evaluation(eval_id)
        if ev is None:
            raise RegistryError(f"unknown evaluation {eval_id!r}")
        ev = EvaluationRecord.model_validate({**ev.model_dump(), **changes})
        self.save_evaluation(ev)
        return ev

    def get_evaluation(self, eval_id: str) -> EvaluationRecord | None:
        raw = self.redis.get(f"{PREFIX}eval:{eval_id}")
        return EvaluationRecord.model_validate_json(raw) if raw else None

    def list_evaluations(self, checkpoint: str | None = None) -> list[EvaluationRecord]:
        key = f"{PREFIX}ckpt:{checkpoint}:evals" if checkpoint else f"{PREFIX}evals"
        ids = self.redis.zrange(key, 0, -1)
        raws = self.redis.mget([f"{PREFIX}eval:{i}" for i in ids]) if ids else []
        return [EvaluationRecord.model_validate_json(r) for r in raws if r]
