"""`ray job submit` against a real local cluster (`ray start --head`, requiring the machine's Ray
token, as sftrl's local Ray does): a short training job runs on the cluster, and its checkpoints are
read back from the registry."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from sftrl.ports import free_loopback_port
from sftrl.registry import Registry

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _submit(cluster: str, tmp_path: Path, config: dict[str, Any], job_id: str, redis_url: str) -> None:
    config_path = tmp_path / f"{job_id}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    runtime_env = {"env_vars": {"REDIS_URL": redis_url}}
    submit = [RAY, "job", "submit", "--address", cluster, "--no-wait", "--submission-id", job_id,
              "--runtime-env-json", json.dumps(runtime_env), "--",
              sys.executable, "-m", "deploy.cli", "train", "--config", str(config_path)]  # fmt: skip
    for _ in range(40):  # the head's job agent may come up a little after its dashboard
        out = subprocess.run(submit, env=dict(os.environ), capture_output=True, text=True, timeout=120)
        if out.returncode == 0 or "No available agent" not in out.stderr + out.stdout:
            break
        time.sleep(3)
    assert out.returncode == 0, out.stdout + out.stderr


def _finished(cluster: str, job_id: str, timeout: float = 900) -> tuple[Any, str]:
    """The job's final status and its logs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster)
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                            JobStatus.STOPPED):  # fmt: skip
        assert time.monotonic() < deadline, f"the job did not finish in {timeout} s"
        time.sleep(2)
    return status, client.get_job_logs(job_id)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A one-node Ray cluster started the way a user starts one; yields the job-submission address.
    Shared by the module's jobs, as a user's cluster is: its start and its stop take a minute."""
    temp_dir = Path("/tmp") / f"sftrl-ray-{os.getpid()}"  # short: Ray's socket paths have a length limit
    dash = free_loopback_port()
    # the token of conftest's use_local_token; `ray job stop` waits for a final checkpoint, as documented
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_JOB_STOP_WAIT_TIME_S": "120"}
    env.pop("RAY_ADDRESS", None)
    # --block keeps `ray start` in the foreground: stopping its process group stops this cluster only
    # (`ray stop` would stop every Ray on the machine, other users' included).
    start = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(free_loopback_port()),
             "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dash), "--temp-dir", str(temp_dir), "--disable-usage-stats"]  # fmt: skip
    head = subprocess.Popen(
        start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    address = f"http://127.0.0.1:{dash}"
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 300
        while True:
            assert head.poll() is None, "ray start --head exited"
            try:
                if requests.get(f"{address}/api/version", headers=auth, timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the Ray dashboard did not come up in 5 minutes"
            time.sleep(1)
        assert requests.get(f"{address}/api/version", timeout=10).status_code == 401  # the token is required
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_and_registers_checkpoints(
    cluster: str, tmp_path: Path, tiny_model: Path, registry: Registry, registry_server: str
) -> None:
    config = {
        "run_name": "cluster-job",
        "output_dir": str(tmp_path / "runs"),
        "model": str(tiny_model),
        "env": {"id": "sftrl/GeneralPoints-v0", "options": {"prompt_style": "compact", "verify_iter": 2}},
        "stages": [
            {
                "kind": "sft",
                "name": "sft",
                "steps": 4,
                "batch_size": 8,
                "max_len": 512,
                "data": {"episodes": 64},
                "optim": {"lr": 1e-3, "warmup_steps": 1},
            }
        ],  # fmt: skip
        "eval": {"every": 4, "episodes": 4, "sampling": {"temperature": 0.0, "max_tokens": 16}},
        "checkpoint": {"every": 2, "keep": 2},
        "learner": {"precision": "fp32", "micro_batch_size": 8},
        "rollout": {"engine": {"dtype": "float32", "max_model_len": 1024}},
        "tensorboard": False,
    }
    from ray.job_submission import JobStatus

    _submit(cluster, tmp_path, config, "sftrl-test-job", registry_server)
    status, logs = _finished(cluster, "sftrl-test-job")
    assert status == JobStatus.SUCCEEDED, logs[-3000:]

    run = registry.get_run("cluster-job")
    assert run is not None and run.status == "finished", logs[-2000:]
    assert run.config["stages"][0]["steps"] == 4
    checkpoints = registry.list_checkpoints("cluster-job")
    assert [c.step for c in checkpoints] == [2, 4]  # keep=2: both, as recorded while training
    assert all(Path(c.path).is_dir() for c in checkpoints) and checkpoints[-1].final
    assert "success/id" in checkpoints[-1].metrics  # the evaluation at the last step


@pytest.mark.fault
def test_ray_job_stop_leaves_time_for_the_final_checkpoint(
    cluster: str, tmp_path: Path, tiny_model: Path, registry: Registry, registry_server: str
) -> None:
    """`ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default 3 s is
    shorter than this run's step and checkpoint): with the documented wait, the run finishes its step,
    writes its checkpoint and is left "interrupted", ready for `--resume auto`."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    config = {
        "run_name": "stopped-job", "output_dir": str(tmp_path / "runs"), "model": str(tiny_model),
        "env": {"id": "sftrl/GeneralPoints-v0", "options": {"prompt_style": "compact", "verify_iter": 2}},
        # steps of several seconds (512 rows each), so a step and its checkpoint outlast Ray's default 3 s
        "stages": [{"kind": "sft", "name": "sft", "steps": 100_000, "batch_size": 512, "max_len": 512,
                    "data": {"episodes": 512}, "optim": {"lr": 1e-3, "warmup_steps": 1}}],
        "eval": {"every": 1_000_000, "episodes": 4, "sampling": {"temperature": 0.0, "max_tokens": 16}},
        "checkpoint": {"every": 2, "keep": 2}, "learner": {"precision": "fp32", "micro_batch_size": 32},
        "rollout": {"engine": {"dtype": "float32", "max_model_len": 1024}}, "tensorboard": False,
    }  # fmt: skip
    _submit(cluster, tmp_path, config, "sftrl-stopped-job", registry_server)
    first = tmp_path / "runs" / "stopped-job" / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 600
    while not first.exists():
        assert time.monotonic() < deadline, "no checkpoint before the stop"
        time.sleep(0.5)
    JobSubmissionClient(cluster).stop_job("sftrl-stopped-job")
    status, logs = _finished(cluster, "sftrl-stopped-job", timeout=300)
    assert status == JobStatus.STOPPED
    assert "stopped by SIGTERM after step" in logs, logs[-3000:]
    step = int(logs.split("stopped by SIGTERM after step")[1].split(";")[0])
    assert (first.parent / f"step-{step:06d}").is_dir()
    run = registry.get_run("stopped-job")
    assert run is not None and run.status == "interrupted"
