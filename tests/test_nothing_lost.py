"""Nothing lost (Hardening II): a driver killed with SIGKILL shows "lost", not "running" forever; the
metrics that led to a checkpoint are on disk before it is; a crashed writer's temporary folders are
cleaned at the next run start whatever pid or host they name, and a live writer's never; a registry
catch-up after an outage hashes each checkpoint once. Real redis-server, real files and processes."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import sftrl.checkpoint as ckpt
from deploy.cli import main
from deploy.train.config import load_train_config
from deploy.train.loop import Trainer
from deploy.train.metrics import MetricsLog
from deploy.train.registry_sync import RunRegistrar, read_run, resync
from sftrl.checkpoint import CheckpointManager, VerifiedCache, atomic_checkpoint, verify, write_trainer_state
from sftrl.registry import LocalRedis, Registry, RunRecord
from tests.run_folders import make_run_folder

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 0.5  # lease 1.5 s: short for the test, long beside a busy 2-core machine's thread wake-ups


def wait_for(predicate: Any, timeout_s: float, what: str) -> float:
    """Seconds until ``predicate()`` holds (polled), or a failure naming ``what``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - start


def small_model(folder: Path) -> Path:
    """A model folder of a few kilobytes (what make_run_folder copies into each checkpoint)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.arange(16.0).reshape(4, 4)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


def trainer_config(out: Path) -> Any:
    return load_train_config(None, ["model=tiny", f"output_dir={out}", "run_name=r", "tensorboard=false",
                                    "learner.precision=fp32", "rollout.engine.dtype=float32",
                                    "registry.enabled=false"])  # fmt: skip


class FileLearner:
    """Stands in for the learner group's ``save_checkpoint`` only: it writes through the same atomic
    commit (:func:`sftrl.checkpoint.atomic_checkpoint`) that rank 0 uses, without DeepSpeed."""

    def save_checkpoint(self, path: str, extra: dict[str, Any]) -> None:
        with atomic_checkpoint(Path(path)) as tmp:
            save_file({"w": torch.zeros(2, 2)}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text("{}")
            write_trainer_state(tmp, {"extra": extra})


# -- 1. a driver killed with SIGKILL -----------------------------------------------------------------

DRIVER = """
import sys, time
from deploy.train.registry_sync import RunRegistrar
from sftrl.registry import Registry, RunRecord

registrar = RunRegistrar(Registry(sys.argv[1]), RunRecord(run_id="killed", run_dir=sys.argv[2]),
                         heartbeat_s=float(sys.argv[3]))
print("registered", flush=True)
time.sleep(3600)
"""


@pytest.mark.fault
def test_a_driver_killed_with_sigkill_is_shown_lost_and_a_live_one_stays_running(
    registry: Registry, registry_server: str, tmp_path: Path
) -> None:
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, registry_server, str(tmp_path / "killed"),
                               str(HEARTBEAT_S)], cwd=REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    alive = RunRegistrar(Registry(registry_server), RunRecord(run_id="alive", run_dir=str(tmp_path / "alive")),
                         heartbeat_s=HEARTBEAT_S)  # fmt: skip
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "registered"
        time.sleep(3 * alive.lease_s)  # three leases: only renewals keep both running
        assert {r.run_id: r.status for r in registry.list_runs()} == {"killed": "running", "alive": "running"}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        # lost once the lease its last heartbeat took runs out: within one lease of the kill
        wait_for(
            lambda: registry.get_run("killed").status == "lost", alive.lease_s + 1.0, "the killed run lost"
        )
        assert registry.get_run("alive").status == "running"  # renewed all along
        shown = CliRunner().invoke(main, ["runs"], env={"REDIS_URL": registry_server}, terminal_width=200)
        assert shown.exit_code == 0, shown.output
        lines = {
            line.split("│")[1].strip(): line for line in shown.output.splitlines() if line.count("│") > 2
        }
        assert "lost" in lines["killed"] and "running" in lines["alive"]
        alive.finish("finished")
        time.sleep(2 * alive.lease_s)  # no heartbeat after the end, and an ended run is never lost
        assert registry.get_run("alive").status == "finished"
    finally:
        alive.close()
        alive.registry.close()
        if driver.poll() is None:
            driver.kill()
            driver.wait()


@pytest.mark.fault
def test_a_lost_run_whose_driver_renews_runs_again_and_resync_keeps_a_live_lease(
    registry: Registry, tmp_path: Path
) -> None:
    """A driver only out of reach (Redis down longer than its lease) is running again at its next
    heartbeat; an ended run stays ended; `sftrl registry resync` keeps a live run's lease."""
    run_dir = tmp_path / "runs" / "r"
    make_run_folder(run_dir, small_model(tmp_path / "model"), [])  # a run still in its first steps
    run, _, _ = read_run(run_dir)
    registrar = RunRegistrar(registry, run.model_copy(update={"status": "running"}), heartbeat_s=3600)
    try:
        lease = registry.get_run("r").lease_until
        assert registry.get_run("r").status == "running" and lease > time.time() + 3000
        resync(registry, [run_dir])  # the folder alone would say "interrupted"
        assert (registry.get_run("r").status, registry.get_run("r").lease_until) == ("running", lease)
        stale = registry.get_run("r").model_copy(update={"lease_until": time.time() - 1})
        registry.redis.set("sftrl:run:r", stale.model_dump_json())  # its heartbeats stopped reaching Redis
        assert [r.status for r in registry.list_runs()] == ["lost"]
        registry.renew_run_lease("r", 60)  # the driver's next heartbeat
        assert registry.get_run("r").status == "running"
        registrar.finish("interrupted")
        registry.renew_run_lease("r", -1)  # a late heartbeat: the end stands, and nothing reads it lost
        assert registry.get_run("r").status == "interrupted"
    finally:
        registrar.close()


# -- 2. metrics on disk before the checkpoint ------------------------------------------------------------


class DiskOrder:
    """Observes the real ``os.fsync`` and ``os.replace`` calls (each is still made), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.events: list[tuple[str, str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), ""))
            real_fsync(fd)

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            self.events.append(("replace", str(src), str(dst)))
            real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def first(self, kind: str, path: Path, into: bool = False) -> int:
        """Index of the first ``kind`` event on ``path`` (``into``: a rename onto it)."""
        for i, (k, a, b) in enumerate(self.events):
            if k == kind and os.path.realpath(b if into else a) == os.path.realpath(path):
                return i
        raise AssertionError(f"no {kind} of {path} in {self.events}")


@pytest.mark.fault
def test_the_metrics_are_on_disk_before_the_checkpoint_they_led_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = Trainer(trainer_config(tmp_path))
    trainer.learner = FileLearner()  # type: ignore[assignment]
    trainer.metrics.log({"kind": "train", "stage": "sft", "stage_step": 1, "global_step": 1, "loss": 0.5})
    trainer.global_step = 1
    order = DiskOrder(monkeypatch)
    final = trainer._save(0, 1, final=False)  # the loop's checkpoint call: driver, then the commit
    metrics = (tmp_path / "r" / "metrics.jsonl").resolve()
    assert order.first("fsync", metrics) < order.first("replace", final.resolve(), into=True)
    assert order.first("fsync", metrics.parent) < order.first("replace", final.resolve(), into=True)
    verify(final)
    # a resume's rewrite of the records is on disk before it replaces the file
    order.events.clear()
    MetricsLog(tmp_path / "r", tensorboard=False, truncate_after_step=1)
    rewrite = next(Path(a) for k, a, b in order.events if k == "replace" and Path(b).resolve() == metrics)
    assert rewrite.name.startswith(".metrics.jsonl.") and rewrite.parent == metrics.parent
    assert order.first("fsync", rewrite) < order.first("replace", metrics, into=True)
    assert order.first("fsync", metrics.parent) > order.first("replace", metrics, into=True)


# -- 3. temporary checkpoint folders ----------------------------------------------------------------------


@pytest.mark.fault
def test_a_dead_writers_temporaries_go_at_the_next_run_start_whatever_pid_or_host_they_name(
    tmp_path: Path,
) -> None:
    """pid 1 and a live process's pid are alive here, and another node's pid says nothing here: none
    of them tells whether the writer lives. The next run of the folder, its one writer, cleans them."""
    first = Trainer(trainer_config(tmp_path))
    first.learner = FileLearner()  # type: ignore[assignment]
    first.global_step = 1
    step1 = first._save(0, 1, final=False)
    first.close()  # its process would be dead: the kernel drops a dead writer's folder lock
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    root = tmp_path / "r" / "checkpoints"
    left = [root / ".step-000002.tmp-1", root / f".step-000002.tmp-{other.pid}",
            root / ".step-000002.tmp-node-b-4242-0badf00d", root / ".step-000001.old-1"]  # fmt: skip
    try:
        for folder in left:
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"partial")
        resumed = Trainer(trainer_config(tmp_path), resume=True)  # the next run start
        assert resumed.resume_state is not None and resumed.resume_state["global_step"] == 1
        assert not [p for p in left if p.exists()], "a crashed writer's leftovers were kept"
        assert verify(step1) == step1 and sorted(p.name for p in root.iterdir()) == ["step-000001"]
    finally:
        other.kill()
        other.wait()


LIVE_WRITER = """
import sys
from pathlib import Path
import torch
from safetensors.torch import save_file
import sftrl.checkpoint as ckpt

real_commit = ckpt.commit

def commit(tmp, final):  # hold the write open until the test has read the folder
    print(tmp, flush=True)
    sys.stdin.readline()
    return real_commit(tmp, final)

ckpt.commit = commit
with ckpt.atomic_checkpoint(Path(sys.argv[1])) as tmp:
    save_file({"w": torch.zeros(2, 2)}, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text("{}")
    ckpt.write_trainer_state(tmp, {"extra": {"global_step": 3}})
"""


@pytest.mark.fault
def test_readers_never_touch_a_live_writers_temporaries(registry: Registry, tmp_path: Path) -> None:
    """While a writer (another process here; on a cluster, another node) is mid-write or between the two
    renames of a replacement, readers (resync, the resume checks, the registry's catch-up) change
    nothing: a pid that is not alive here may be alive there."""
    run_dir = tmp_path / "runs" / "r"
    make_run_folder(run_dir, small_model(tmp_path / "model"), [1, 2])
    root = run_dir / "checkpoints"
    aside = root / ".step-000002.old-999999"  # a replacement of step 2 between its two renames
    (root / "step-000002").rename(aside)
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(root / "step-000003")], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdin is not None
        temp = Path(writer.stdout.readline().strip())
        assert temp.parent == root and temp.is_dir()
        for read in (lambda: CheckpointManager(root).steps(), lambda: read_run(run_dir),
                     lambda: resync(registry, [run_dir])):  # fmt: skip
            read()
            assert temp.is_dir() and aside.is_dir() and not (root / "step-000002").exists()
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert verify(root / "step-000003") and not temp.exists()


# -- 4. hashing while Redis is down ---------------------------------------------------------------


@pytest.mark.fault
def test_a_registry_outage_hashes_each_checkpoint_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "runs" / "r"
    folders = make_run_folder(run_dir, small_model(tmp_path / "model"), [10, 20, 30])
    server = LocalRedis(tmp_path / "redis")
    url = server.start()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    hashed: collections.Counter[Path] = collections.Counter()
    real_sha256 = ckpt._sha256

    def sha256(path: Path) -> str:  # observes every hash of a checkpoint file (still computed)
        hashed[Path(path)] += 1
        return real_sha256(path)

    run, _, _ = read_run(run_dir)
    monkeypatch.setattr(ckpt, "_sha256", sha256)
    reg = Registry(url, timeout_s=1.0)
    try:
        registrar = RunRegistrar(reg, run)  # default heartbeat: no beat during the test
        registrar.checkpoint(folders[0], None)
        server.release(force=True)  # Redis goes away
        for _ in range(3):  # every call fails: the loop's checkpoints and forgets, heartbeats
            registrar.checkpoint(folders[1], None)
            registrar.checkpoint(folders[2], None)
            registrar.forget(5)
        assert registrar.dirty
        server = LocalRedis(tmp_path / "redis", port=port)  # back on its port
        server.start()
        registrar.checkpoint(folders[2], None)  # the catch-up: every retained checkpoint read again
        registrar.finish("finished")
        assert [c.step for c in reg.list_checkpoints(registrar.run_id)] == [10, 20, 30]
        files = {p for folder in folders for p in ckpt.checkpoint_files(folder)}
        assert set(hashed) == files and max(hashed.values()) == 1, hashed
    finally:
        reg.close()
        server.release(force=True)  # the instance that started it reaps it


def test_a_replaced_checkpoint_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache is keyed by the COMPLETE marker's identity: a checkpoint saved again under the same step
    is new to it; one unchanged is not hashed twice."""
    manager = CheckpointManager(tmp_path, keep=2)
    learner = FileLearner()
    manager.save(1, lambda p: learner.save_checkpoint(str(p), {"global_step": 1}))
    calls: list[Path] = []
    real_sha256 = ckpt._sha256
    monkeypatch.setattr(ckpt, "_sha256", lambda path: calls.append(path) or real_sha256(path))
    cache = VerifiedCache()
    cache.verify(tmp_path / "step-000001")
    cache.verify(tmp_path / "step-000001")
    once = len(calls)
    assert once == len(ckpt.checkpoint_files(tmp_path / "step-000001"))
    monkeypatch.setattr(ckpt, "_sha256", real_sha256)
    manager.save(1, lambda p: learner.save_checkpoint(str(p), {"global_step": 1, "again": True}))
    monkeypatch.setattr(ckpt, "_sha256", lambda path: calls.append(path) or real_sha256(path))
    cache.verify(tmp_path / "step-000001")
    assert len(calls) == 2 * once
