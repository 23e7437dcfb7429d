"""The registry on a real redis-server: records, the local server's life cycle, resync from run folders,
and a training run's writer surviving a Redis that goes away and comes back."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from deploy.cli import main
from deploy.evaluate.checkpoint import (
    EvalInputError,
    EvalRequest,
    UnknownCheckpoint,
    check_counts,
    create_evaluation,
)
from deploy.train.registry_sync import RunRegistrar, read_run, resync
from sftrl.registry import (
    LocalRedis,
    Registry,
    RegistryError,
    RunRecord,
    open_registry,
    parse_checkpoint_ref,
)
from tests.run_folders import make_run_folder


@pytest.fixture
def run_dir(tmp_path: Path, tiny_model: Path) -> Path:
    folder = tmp_path / "runs" / "gp-sft"
    make_run_folder(folder, tiny_model, [10, 20, 30])
    return folder


# -- the local server --------------------------------------------------------------------------------


def test_local_server_is_shared_stopped_by_the_last_user_and_persists(tmp_path: Path) -> None:
    first = LocalRedis(tmp_path / "redis")
    url = first.start()
    second = LocalRedis(tmp_path / "redis")
    assert second.start() == url  # attached, not a second server
    reg = Registry(url)
    reg.register_run(RunRecord(run_id="kept", run_dir="/data/kept"))
    assert reg.ping()
    assert first.release() is False  # another client (reg) is still connected
    assert reg.ping()
    reg.close()
    assert second.release() is True
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    # A restart from the same folder replays the append-only file.
    third = LocalRedis(tmp_path / "redis")
    with Registry(third.start()) as again:
        assert [r.run_id for r in again.list_runs()] == ["kept"]
    assert third.release() is True


def test_local_server_requires_its_password_and_keeps_it_private(tmp_path: Path) -> None:
    import stat

    import psutil

    server = LocalRedis(tmp_path / "redis")
    url = server.start()
    try:
        password = (tmp_path / "redis" / "password").read_text().strip()
        assert len(password) >= 32 and f":{password}@127.0.0.1:" in url
        for name in ("password", "redis.conf"):
            assert stat.S_IMODE((tmp_path / "redis" / name).stat().st_mode) == 0o600
        assert password not in (tmp_path / "redis" / "server.json").read_text()
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(redis.AuthenticationError):  # no password: refused
            redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).set("k", "v")
        pid = json.loads((tmp_path / "redis" / "server.json").read_text())["pid"]
        assert password not in " ".join(psutil.Process(pid).cmdline())  # not visible to `ps`
        assert LocalRedis(tmp_path / "redis").start() == url  # a second user attaches with it
    finally:
        server.release(force=True)


def test_open_registry_without_redis_url_runs_a_local_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setenv("SFTRL_HOME", str(tmp_path))
    with open_registry() as reg:
        reg.register_run(RunRecord(run_id="local", run_dir=str(tmp_path / "local")))
        assert (tmp_path / "redis" / "server.json").exists()
    assert not (tmp_path / "redis" / "server.json").exists()  # stopped: nobody else used it
    assert (tmp_path / "redis" / "appendonly.aof").stat().st_size > 0
    with open_registry() as reg:
        assert reg.get_run("local") is not None


# -- records -----------------------------------------------------------------------------------------


def test_run_ids_are_stable_per_folder_and_never_collide(registry: Registry) -> None:
    a = registry.register_run(RunRecord(run_id="exp", run_dir="/a/exp"))
    b = registry.register_run(RunRecord(run_id="exp", run_dir="/b/exp"))
    again = registry.register_run(RunRecord(run_id="exp", run_dir="/b/exp", status="finished"))
    assert a.run_id == "exp" and b.run_id.startswith("exp-") and again.run_id == b.run_id
    assert again.created == b.created and registry.get_run(b.run_id).status == "finished"
    assert sorted(r.run_id for r in registry.list_runs()) == sorted(["exp", b.run_id])


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("run", ("run", None)),
        ("run@latest", ("run", None)),
        ("run@12", ("run", 12)),
        ("a.b-c_d@0", ("a.b-c_d", 0)),
    ],
)
def test_checkpoint_refs(ref: str, expected: tuple[str, int | None]) -> None:
    assert parse_checkpoint_ref(ref) == expected


@pytest.mark.parametrize(
    "ref", ["", "@3", "run@", "run@-1", "run@x", "../etc@1", "run@1@2", "a b", "x" * 200, "run\n", "run\n@3"]
)
def test_bad_checkpoint_refs_are_refused(ref: str) -> None:
    with pytest.raises(ValueError, match="checkpoint reference"):
        parse_checkpoint_ref(ref)


def test_resync_registers_verified_checkpoints_with_their_metrics(registry: Registry, run_dir: Path) -> None:
    report = resync(registry, [run_dir.parent])
    assert report.runs == ["gp-sft"] and report.checkpoints == 3 and not report.skipped
    ckpts = registry.list_checkpoints("gp-sft")
    assert [c.step for c in ckpts] == [10, 20, 30]
    assert ckpts[1].metrics == {"success/id": 0.02} and ckpts[2].final and not ckpts[0].final
    assert Path(ckpts[0].path) == (run_dir / "checkpoints" / "step-000010").resolve()
    assert registry.resolve_checkpoint("gp-sft").step == 30
    assert registry.resolve_checkpoint("gp-sft@20").checkpoint_id == "gp-sft@20"
    assert registry.get_run("gp-sft").status == "finished"
    with pytest.raises(RegistryError, match="unknown checkpoint"):
        registry.resolve_checkpoint("gp-sft@25")
    with pytest.raises(RegistryError, match="no registered checkpoint"):
        registry.resolve_checkpoint("nope")


def test_resync_drops_what_is_gone_or_corrupt(registry: Registry, run_dir: Path) -> None:
    resync(registry, [run_dir])
    shutil.rmtree(run_dir / "checkpoints" / "step-000010")
    weights = run_dir / "checkpoints" / "step-000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated after it was written
    report = resync(registry, [])  # registered runs are re-read without naming them
    assert sorted(report.dropped) == ["gp-sft@10", "gp-sft@30"]
    assert any("does not match its sha256" in s for s in report.skipped)
    assert [c.step for c in registry.list_checkpoints("gp-sft")] == [20]
    shutil.rmtree(run_dir)
    # a folder this machine cannot see (unmounted volume, another host) is not proof it is gone
    report = resync(registry, [])
    assert not report.dropped and report.unseen[0].startswith("gp-sft (") and registry.get_run("gp-sft")
    assert [c.step for c in registry.list_checkpoints("gp-sft")] == [20]
    report = resync(registry, [], prune=True)  # asked for: dropped
    assert report.dropped == ["gp-sft"] and registry.list_runs() == []


def test_resync_opens_no_folder_a_record_names_outside_the_roots(
    registry: Registry, run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resync(registry, [run_dir])
    # a Redis writer points the record elsewhere; the run folder there is real, but no root allows it
    monkeypatch.setenv("SFTRL_CHECKPOINT_ROOTS", str(tmp_path / "roots"))
    (tmp_path / "roots").mkdir()
    shutil.rmtree(run_dir / "checkpoints" / "step-000010")
    report = resync(registry, [])
    assert report.outside == [f"gp-sft ({run_dir.resolve()})"] and not report.runs and not report.dropped
    assert [c.step for c in registry.list_checkpoints("gp-sft")] == [10, 20, 30]  # not re-read
    report = resync(registry, [], prune=True)
    assert registry.get_run("gp-sft") and not report.dropped  # nor dropped: it was never looked at
    report = resync(registry, [run_dir.parent])  # named by the operator: read
    assert report.runs and [c.step for c in registry.list_checkpoints("gp-sft")] == [20, 30]


@pytest.mark.fault
def test_run_writer_survives_losing_redis_and_catches_up(tmp_path: Path, run_dir: Path) -> None:
    server = LocalRedis(tmp_path / "redis-down")
    url = server.start()
    server.release(force=True)  # Redis is down when the run starts: the run's id is not known yet
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    reg = Registry(url, timeout_s=1.0)
    run, checkpoints, _ = read_run(run_dir)
    registrar = RunRegistrar(reg, run)
    assert registrar.dirty
    LocalRedis(tmp_path / "redis-down", port=port).start()
    other = run.model_copy(update={"run_dir": str(tmp_path / "another-folder")})
    reg.register_run(other)  # meanwhile another folder took the run's name
    assert reg.get_run(run.run_id).run_dir == other.run_dir
    registrar.checkpoint(checkpoints[0][0], {"success/id": 0.5})
    server.release(force=True)  # Redis goes away mid-run
    registrar.checkpoint(checkpoints[1][0], None)  # no exception: the run goes on
    registrar.checkpoint(checkpoints[2][0], None)
    assert registrar.dirty
    LocalRedis(tmp_path / "redis-down", port=port).start()
    registrar.finish("finished")  # reconnects, resyncs from the folder, then records the status
    assert not registrar.dirty
    own = registrar.run_id
    assert own != run.run_id and own.startswith(f"{run.run_id}-")  # suffixed: the name was taken
    assert [c.step for c in reg.list_checkpoints(own)] == [10, 20, 30]
    assert reg.get_run(own).status == "finished"
    assert reg.get_run(run.run_id).run_dir == other.run_dir and reg.list_checkpoints(run.run_id) == []
    reg.close()
    LocalRedis(tmp_path / "redis-down").release(force=True)


def test_a_run_started_over_drops_the_records_of_checkpoints_it_no_longer_holds(
    registry: Registry, run_dir: Path
) -> None:
    """`--restart` moves the folder aside: the run's writer, starting, forgets the old checkpoints (a
    resumed run keeps those its folder still holds), so `gp-sft@30` never names a moved folder."""
    resync(registry, [run_dir])
    shutil.rmtree(run_dir / "checkpoints" / "step-000030")  # pruned while no writer ran
    run, _, _ = read_run(run_dir)
    registrar = RunRegistrar(registry, run)  # a resume
    registrar.close()
    assert [c.step for c in registry.list_checkpoints("gp-sft")] == [10, 20]
    aside = run_dir.rename(run_dir.with_name("gp-sft.old-20261206T000000Z"))
    run_dir.mkdir()
    shutil.copy(aside / "resolved_config.yaml", run_dir / "resolved_config.yaml")
    registrar = RunRegistrar(registry, read_run(run_dir)[0])  # started over
    registrar.close()
    assert registrar.run_id == "gp-sft" and registry.list_checkpoints("gp-sft") == []
    with pytest.raises(RegistryError, match="no registered checkpoint"):
        registry.resolve_checkpoint("gp-sft")


# -- evaluation requests are validated against the registry -----------------------------------------------


def test_evaluation_requests_are_checked(registry: Registry, run_dir: Path) -> None:
    resync(registry, [run_dir])
    ok = create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite="ood_rule", episodes=4))
    assert ok.checkpoint_id == "gp-sft@30" and ok.status == "queued"
    assert ok.suite.options["face_cards"] == "as_11_12_13" and ok.suite.env == "sftrl/GeneralPoints-v0"
    assert ok.sampling["temperature"] == 0.0  # the run's evaluation sampling
    assert registry.list_evaluations("gp-sft@30")[0].eval_id == ok.eval_id
    with pytest.raises(UnknownCheckpoint):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft@11", suite="id"))
    with pytest.raises(EvalInputError, match="unknown suite 'visual'"):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite="visual"))
    with pytest.raises(EvalInputError, match="bad suite"):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite={"env": "sftrl/Nope-v0"}))
    with pytest.raises(EvalInputError, match="bad suite"):
        bad = {"env": "sftrl/GeneralPoints-v0", "options": {"face_cards": "as_99"}}
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite=bad))
    with pytest.raises(EvalInputError, match="at most 8"):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite="id", episodes=9), max_episodes=8)
    # pass@k: several samples of a task, which greedy decoding cannot give; samples count against the limit
    with pytest.raises(EvalInputError, match="temperature above 0"):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite="id", episodes=2, samples=4))
    hot = {"temperature": 1.0}
    with pytest.raises(EvalInputError, match="episodes x samples must be at most 8"):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite="id", episodes=3, samples=4, sampling=hot),
                          max_episodes=8)  # fmt: skip
    sampled = create_evaluation(
        registry, EvalRequest(checkpoint="gp-sft", suite="id", episodes=2, samples=4, sampling=hot)
    )
    assert sampled.samples == 4 and sampled.sampling["temperature"] == 1.0
    # a record read back from Redis is held to the request's bounds again
    for episodes, samples, message in (
        (0, 1, "episodes must be 1 to 100000"),
        (1, 65, "samples must be 1 to 64"),
    ):
        with pytest.raises(EvalInputError, match=message):
            check_counts(episodes, samples, None)
    check_counts(100_000, 64, None)
    assert registry.update_evaluation(sampled.eval_id, episodes_done=4).progress == 0.5


@pytest.mark.fault
def test_a_latest_checkpoint_that_fails_verification_is_skipped(registry: Registry, run_dir: Path) -> None:
    resync(registry, [run_dir])
    (run_dir / "checkpoints" / "step-000030" / "config.json").write_text("{}")  # changed after the commit
    ev = create_evaluation(registry, EvalRequest(checkpoint="gp-sft@latest", suite="id", episodes=4))
    assert ev.checkpoint_id == "gp-sft@20" and "skipped gp-sft@30" in ev.note
    named = create_evaluation(registry, EvalRequest(checkpoint="gp-sft@30", suite="id", episodes=4))
    assert named.checkpoint_id == "gp-sft@30" and named.note == ""  # named: its load fails, with the reason
    elsewhere = [run_dir.parent.parent / "other-root"]
    with pytest.raises(UnknownCheckpoint, match="no checkpoint of run 'gp-sft' passes verification"):
        create_evaluation(registry, EvalRequest(checkpoint="gp-sft", suite="id"), roots=elsewhere)


# -- the command line ------------------------------------------------------------------------------------


def test_runs_checkpoints_and_resync_commands(registry: Registry, run_dir: Path) -> None:
    runner = CliRunner()
    empty = runner.invoke(main, ["runs"])
    assert empty.exit_code == 0 and "no runs registered" in empty.output
    synced = runner.invoke(main, ["registry", "resync", str(run_dir.parent)])
    assert synced.exit_code == 0, synced.output
    assert "re-synced 1 run(s), 3 checkpoint(s)" in synced.output
    listed = runner.invoke(main, ["runs"])
    assert "gp-sft" in listed.output and "finished" in listed.output
    ckpts = runner.invoke(main, ["checkpoints", "gp-sft"])
    assert ckpts.exit_code == 0 and "gp-sft@20" in ckpts.output and "id 2.0%" in ckpts.output
    unknown = runner.invoke(main, ["checkpoints", "nope"])
    assert unknown.exit_code == 2 and "unknown run 'nope'" in unknown.output


def test_evaluate_command_refuses_bad_requests_before_loading_a_model(
    registry: Registry, run_dir: Path
) -> None:
    resync(registry, [run_dir])
    runner = CliRunner()
    neither = runner.invoke(main, ["evaluate", "gp-sft"])
    assert neither.exit_code == 2 and "either --suite NAME or --env ID" in neither.output
    bad_suite = runner.invoke(main, ["evaluate", "gp-sft", "--suite", "visual"])
    assert bad_suite.exit_code == 2 and "unknown suite 'visual'" in bad_suite.output
    bad_option = runner.invoke(
        main, ["evaluate", "gp-sft", "--env", "sftrl/GeneralPoints-v0", "--suits", "green"]
    )
    assert bad_option.exit_code == 2 and "bad suite" in bad_option.output
    unknown = runner.invoke(main, ["evaluate", "gp-sft@7", "--suite", "id"])
    assert unknown.exit_code == 2 and "unknown checkpoint 'gp-sft@7'" in unknown.output
    assert registry.list_evaluations() == []  # nothing half-recorded


# -- concurrent writers, expiry, a full Redis -------------------------------------------------------------


def _queued(registry: Registry, eval_id: str = "eval-00000000000000aa") -> str:
    from sftrl.registry.records import EvaluationRecord, SuiteSpec

    suite = SuiteSpec(env="sftrl/GeneralPoints-v0")
    registry.save_evaluation(
        EvaluationRecord(eval_id=eval_id, checkpoint_id="r@1", suite=suite, episodes=400, seed=1)
    )
    return eval_id


def test_concurrent_updates_never_lose_each_others_change(registry: Registry, registry_server: str) -> None:
    """A replica's progress and an API replica's status land on the same record at once: each
    read-modify-write is a WATCH transaction, so the last of each writer's changes survives."""
    import threading

    eval_id = _queued(registry)
    n = 150

    def progress() -> None:
        with Registry(registry_server) as mine:
            for i in range(1, n + 1):
                mine.update_evaluation(eval_id, episodes_done=i)

    def errors() -> None:
        with Registry(registry_server) as mine:
            for i in range(1, n + 1):
                mine.update_evaluation(eval_id, error=f"note {i}")

    threads = [threading.Thread(target=progress), threading.Thread(target=errors)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = registry.get_evaluation(eval_id)
    assert final.episodes_done == n and final.error == f"note {n}"


def test_finished_evaluations_expire_and_leave_the_index(registry_server: str) -> None:
    with Registry(registry_server, eval_ttl_s=1) as short:
        short.redis.flushdb()
        eval_id = _queued(short)
        assert short.redis.ttl(f"sftrl:eval:{eval_id}") == -1  # queued: kept
        short.update_evaluation(eval_id, status="done")
        assert 0 < short.redis.ttl(f"sftrl:eval:{eval_id}") <= 1
        short.redis.pexpire(f"sftrl:eval:{eval_id}", 1)
        import time

        time.sleep(0.05)
        assert short.list_evaluations() == [] and short.redis.zcard("sftrl:evals") == 0


def test_a_full_redis_is_a_registry_trouble_that_says_so(registry: Registry) -> None:
    from sftrl.registry.store import REGISTRY_ERRORS, RegistryFull

    registry.redis.config_set("maxmemory", "1")  # everything is over the limit now
    try:
        with pytest.raises(RegistryFull, match="registry's Redis is full") as info:
            _queued(registry, "eval-00000000000000bb")
        assert isinstance(info.value, REGISTRY_ERRORS)  # a training run only warns; the endpoint says 503
    finally:
        registry.redis.config_set("maxmemory", "1gb")


# -- leases, cancellation -------------------------------------------------------------------------------


@pytest.mark.fault
def test_an_evaluation_nobody_renews_is_lost_and_frees_its_owner(registry: Registry, run_dir: Path) -> None:
    resync(registry, [run_dir])
    request = EvalRequest(checkpoint="gp-sft", suite="id", episodes=4)
    held = create_evaluation(registry, request, owner="o1", lease_s=60)
    dropped = create_evaluation(registry, request, owner="o1", lease_s=0.2)
    other = create_evaluation(registry, request, owner="o2", lease_s=0.2)
    assert {e.eval_id for e in registry.live_evaluations("o1")} == {held.eval_id, dropped.eval_id}
    registry.renew_lease(other.eval_id, 60)  # its runner is alive
    time.sleep(0.4)
    assert [e.eval_id for e in registry.live_evaluations("o1")] == [held.eval_id]
    lost = registry.get_evaluation(dropped.eval_id)
    assert lost.status == "failed" and lost.error.startswith("lost:")
    assert [e.eval_id for e in registry.live_evaluations("o2")] == [other.eval_id]
    # the first end wins: a late "done" of a lost evaluation, or a cancelled one, changes nothing
    assert registry.finish_evaluation(dropped.eval_id, status="done").status == "failed"
    assert registry.finish_evaluation(held.eval_id, status="cancelled").status == "cancelled"
    assert registry.renew_lease(held.eval_id, 60).status == "cancelled"
    assert registry.live_evaluations("o1") == []


@pytest.mark.fault
def test_a_cancelled_evaluation_stops_at_its_next_chunk(registry: Registry, run_dir: Path) -> None:
    from deploy.evaluate.checkpoint import CHUNK_EPISODES, execute_evaluation
    from tests.test_eval_metrics import ScriptedRollout

    resync(registry, [run_dir])
    ev = create_evaluation(
        registry, EvalRequest(checkpoint="gp-sft", suite="id", episodes=3 * CHUNK_EPISODES)
    )

    class CancelledMidway(ScriptedRollout):  # real episodes; the owner cancels while the first chunk plays
        def play(self, specs, sampling):
            registry.finish_evaluation(ev.eval_id, status="cancelled")
            return super().play(specs, sampling)

    rollout = CancelledMidway()
    done = execute_evaluation(registry, ev.eval_id, lambda ckpt, config: rollout, lease_s=5)
    assert done.status == "cancelled" and len(rollout.calls) == 1 and done.metrics == {}
    again = execute_evaluation(registry, ev.eval_id, lambda ckpt, config: rollout)  # nothing to do
    assert again.status == "cancelled" and len(rollout.calls) == 1
    finished = create_evaluation(
        registry, EvalRequest(checkpoint="gp-sft", suite="id", episodes=2), owner="o"
    )
    result = execute_evaluation(registry, finished.eval_id, lambda ckpt, config: ScriptedRollout(), lease_s=5)
    assert result.status == "done" and result.episodes_done == 2 and result.lease_until > time.time()
    stored = registry.get_evaluation(finished.eval_id).outcomes  # per episode, kept with the record
    assert stored is not None and len(stored.task) == len(stored.success) == 2
    assert sum(stored.success) == round(result.metrics["success"] * 2)
    assert registry.live_evaluations("o") == []
