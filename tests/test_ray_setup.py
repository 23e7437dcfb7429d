"""Local Ray listens on loopback only and still requires its token (for the machine's other users):
a caller without the machine's sftrl token is turned away (a real local Ray, real clients in their
own processes)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sftrl.home import secret_file
from tests.listeners import beyond_loopback, listening_sockets

HEAD = """
import json, os, sys
os.environ.pop("RAY_AUTH_MODE", None)
os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # what sftrl sets by itself
import ray
from sftrl.ray_setup import init_ray
init_ray(num_cpus=1)
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}), flush=True)
sys.stdin.read()  # until the test closes the pipe
ray.shutdown()
"""

CLIENT = """
import ray
ray.init(address="{gcs}", log_to_driver=False)
print("resources", ray.cluster_resources().get("CPU"))
"""


def test_a_secret_file_is_made_once_private_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "home" / "token"
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(secret_file(path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and len(results[0]) == 64 and int(results[0], 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert secret_file(path) == results[0]
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no drafts left behind


def _client(gcs: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # a client on the same machine sets what the head set, or Ray rewrites 127.0.0.1 to the node's address
    env = {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run(
        [sys.executable, "-c", CLIENT.format(gcs=gcs)], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.slow
@pytest.mark.hostile
def test_local_ray_turns_away_callers_without_its_token(tmp_path: Path) -> None:
    import json

    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base["SFTRL_HOME"] = str(tmp_path)
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=base
    )
    try:
        started = json.loads(head.stdout.readline())
        token_file = tmp_path / "ray-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        # Ray's GCS, raylet, workers, dashboard agent and runtime-env agent: on loopback only
        sockets = listening_sockets(head.pid)
        assert {"gcs_server", "raylet"} <= {name for name, _, _ in sockets}, sockets
        assert not beyond_loopback(sockets), sockets

        wrong = _client(started["gcs"], {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})
        assert wrong.returncode != 0 and "resources" not in wrong.stdout
        assert "uthentication" in wrong.stderr or "Unauthenticated" in wrong.stderr
        no_auth = _client(started["gcs"], {**base, "RAY_AUTH_MODE": "disabled"})
        assert no_auth.returncode != 0 and "resources" not in no_auth.stdout

        right = _client(
            started["gcs"], {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
        )
        assert right.returncode == 0 and "resources 1.0" in right.stdout, right.stderr[-2000:]
    finally:
        head.stdin.close()
        head.wait(timeout=120)
