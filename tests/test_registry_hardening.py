"""Registry hardening on the session's real redis-server (conftest's ``registry_server``): writes that
depend on what they read start over when another client writes in between, and evaluation indexes
expire with their records, so a token holder's flood of evaluations leaves nothing behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import redis

from sftrl.registry import CheckpointRecord, EvaluationRecord, Registry, RunRecord, SuiteSpec, checkpoint_id

pytestmark = pytest.mark.fault

Interleave = Callable[[str, str, Callable[[], object]], list[bool]]


@pytest.fixture
def interleave(monkeypatch: pytest.MonkeyPatch) -> Interleave:
    """``interleave(command, key, write)``: right after the first ``command`` (a redis-py method such
    as ``get``) on ``key`` by any client, ``write()`` runs: another client's write landing between a
    read and the write that depends on it. Returns a list that holds True once it fired."""

    def arm(command: str, key: str, write: Callable[[], object]) -> list[bool]:
        original = getattr(redis.Redis, command)  # pipelines inherit it: WATCHed reads pass here too
        fired: list[bool] = []

        def wrapped(self: redis.Redis, name: str, *args: object, **kwargs: object) -> object:
            result = original(self, name, *args, **kwargs)
            if name == key and not fired:
                fired.append(True)  # before write(): its own reads must not fire again
                write()
            return result

        monkeypatch.setattr(redis.Redis, command, wrapped)
        return fired

    return arm


def _ckpt(run_id: str, step: int) -> CheckpointRecord:
    return CheckpointRecord(
        checkpoint_id=checkpoint_id(run_id, step), run_id=run_id, step=step, path=f"/x/{run_id}/{step}"
    )


def _evaluation(eval_id: str, ckpt: str, status: str = "queued", owner: str = "") -> EvaluationRecord:
    suite = SuiteSpec(env="sftrl/GeneralPoints-v0")
    return EvaluationRecord(
        eval_id=eval_id, checkpoint_id=ckpt, suite=suite, episodes=4, seed=0, status=status, owner=owner
    )


# -- runs: WATCH/MULTI like every other read-then-write -----------------------------------------------


def test_a_registration_racing_another_folder_for_its_name_retries(
    registry: Registry, registry_server: str, interleave: Interleave
) -> None:
    """Folder /a/exp registers "exp" after /b/exp read that "exp" is free: /b/exp must not overwrite
    it (both folders would then share one record), it retries and takes its suffixed id."""
    with Registry(registry_server) as other:
        fired = interleave(
            "get", "sftrl:run:exp", lambda: other.register_run(RunRecord(run_id="exp", run_dir="/a/exp"))
        )
        b = registry.register_run(RunRecord(run_id="exp", run_dir="/b/exp"))
    assert fired
    a = registry.get_run("exp")
    assert a is not None and a.run_dir == "/a/exp"  # the first folder's record survives
    assert b.run_id.startswith("exp-") and registry.get_run(b.run_id).run_dir == "/b/exp"
    assert registry.redis.hgetall("sftrl:rundirs") == {"/a/exp": "exp", "/b/exp": b.run_id}
    assert sorted(r.run_id for r in registry.list_runs()) == sorted(["exp", b.run_id])


def test_folders_registering_one_name_at_once_each_get_their_own_id(
    registry: Registry, registry_server: str
) -> None:
    """The same race with real threads and clients: every folder ends with its own id and record."""
    folders = [f"/f{i}/exp" for i in range(8)]
    start = threading.Barrier(len(folders))
    stored: dict[str, str] = {}

    def register(folder: str) -> None:
        with Registry(registry_server) as mine:
            start.wait()
            stored[folder] = mine.register_run(RunRecord(run_id="exp", run_dir=folder)).run_id

    threads = [threading.Thread(target=register, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(set(stored.values())) == len(folders)
    assert registry.redis.hgetall("sftrl:rundirs") == stored
    assert {f: registry.get_run(i).run_dir for f, i in stored.items()} == {f: f for f in folders}


def test_a_checkpoint_recorded_while_its_run_is_deleted_goes_with_it(
    registry: Registry, registry_server: str, interleave: Interleave
) -> None:
    """`resync --prune` deletes a run while its writer records one more checkpoint: the deletion
    starts over and takes it too, instead of leaving a checkpoint record no index lists."""
    registry.register_run(RunRecord(run_id="gone", run_dir="/x/gone"))
    for step in (10, 20):
        registry.record_checkpoint(_ckpt("gone", step))
    with Registry(registry_server) as other:
        fired = interleave(
            "zrange", "sftrl:run:gone:ckpts", lambda: other.record_checkpoint(_ckpt("gone", 30))
        )
        registry.delete_run("gone")
    assert fired
    assert sorted(registry.redis.scan_iter("sftrl:*gone*")) == []  # no orphaned checkpoint record
    assert registry.redis.hgetall("sftrl:rundirs") == {} and registry.list_runs() == []


def test_deleting_a_run_keeps_its_folder_entry_when_the_folder_has_another_id(registry: Registry) -> None:
    registry.register_run(RunRecord(run_id="old", run_dir="/x/run"))
    registry.redis.hset("sftrl:rundirs", "/x/run", "new")  # the folder was re-registered meanwhile
    registry.delete_run("old")
    assert registry.redis.hgetall("sftrl:rundirs") == {"/x/run": "new"}


# -- evaluation indexes expire with their records --------------------------------------------------------


def test_evaluation_indexes_expire_with_their_records(registry_server: str) -> None:
    """A token holder floods one checkpoint with evaluations; once their records expired, nothing of
    them is left: the checkpoint's index expired with its last record (nobody listed it), and the next
    write trims the index of all evaluations. An active evaluation keeps its entries until it ends."""
    flood = [f"eval-{i:016x}" for i in range(30)]
    with Registry(registry_server, eval_ttl_s=1) as short:
        short.redis.flushdb()
        active = _evaluation("eval-00000000000000aa", "r@1", owner="o")
        short.save_evaluation(active)
        for eval_id in flood:
            short.save_evaluation(_evaluation(eval_id, "flood@1", status="done", owner="o"))
        assert short.redis.zcard("sftrl:ckpt:flood@1:evals") == len(flood)
        assert short.redis.zcard("sftrl:evals") == len(flood) + 1
        time.sleep(1.3)
        assert short.redis.exists(*(f"sftrl:eval:{i}" for i in flood)) == 0  # the records expired
        assert short.redis.exists("sftrl:ckpt:flood@1:evals") == 0  # and so did their index
        short.save_evaluation(_evaluation("eval-00000000000000bb", "r@2", status="done"))
        assert set(short.redis.zrange("sftrl:evals", 0, -1)) == {active.eval_id, "eval-00000000000000bb"}
        assert short.redis.ttl("sftrl:ckpt:r@1:evals") == -1  # kept: it lists an active evaluation
        assert [e.eval_id for e in short.list_evaluations("r@1")] == [active.eval_id]
        assert short.redis.smembers("sftrl:owner:o:live") == {active.eval_id}

        short.finish_evaluation(active.eval_id, status="done")  # now it expires, and so do its entries
        index_ms, record_ms = (
            short.redis.pttl(k) for k in ("sftrl:ckpt:r@1:evals", f"sftrl:eval:{active.eval_id}")
        )
        assert 0 < record_ms <= 1000 and record_ms <= index_ms <= record_ms + 5  # the record's time
        time.sleep(1.3)
        assert short.redis.keys("sftrl:*") == []


def test_evaluations_are_listed_oldest_first(registry: Registry) -> None:
    """The indexes are ordered by expiry now; listings still come in the order evaluations were made."""
    first = _evaluation("eval-00000000000000a1", "r@1").model_copy(
        update={"created": "2025-01-01T00:00:00+00:00"}
    )
    second = _evaluation("eval-00000000000000a2", "r@1").model_copy(
        update={"created": "2025-01-02T00:00:00+00:00"}
    )
    registry.save_evaluation(first)
    registry.save_evaluation(second)
    registry.finish_evaluation(second.eval_id, status="done")  # finished first: scored before the other
    assert [e.eval_id for e in registry.list_evaluations("r@1")] == [first.eval_id, second.eval_id]
    assert [e.eval_id for e in registry.list_evaluations()] == [first.eval_id, second.eval_id]
