"""`sftrl serve` as a user starts it (its own local Redis, local Ray, Ray Serve): every socket it and
its processes listen on is on loopback, the endpoint answers there, and Ctrl-C stops it all."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from sftrl.ports import free_loopback_port
from tests.listeners import beyond_loopback, listening_sockets, process_name

REPO = Path(__file__).resolve().parents[1]


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """The output up to the first line holding ``text`` (or all of it, if the process exits first or
    ``timeout`` passes). A thread reads: a selector on a text pipe misses lines already buffered."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (seen and text in seen[-1]):
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            if proc.poll() is not None:
                break
    return "".join(seen)


@pytest.mark.slow
@pytest.mark.hostile
def test_sftrl_serve_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "RAY_ADDRESS")}
    env.update(SFTRL_HOME=str(tmp_path / "home"), SFTRL_API_TOKEN="listeners-test-token", PYTHONUNBUFFERED="1",
               COLUMNS="200")  # fmt: skip
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # what sftrl sets by itself
    # started as a shell without job control starts a background command: SIGINT ignored, inherited
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "serve", "--port", str(port), "--checkpoint-root", str(tmp_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        out = _wait_for_line(proc, "serving on", timeout=300)
        assert "serving on" in out, out[-3000:]
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30)
        assert health.status_code == 200
        sockets = listening_sockets(proc.pid)
        names = {name for name, _, _ in sockets}
        # Redis, Ray's GCS and raylet, Serve's proxy on the asked port: all there, all on loopback
        assert {"redis-server", "gcs_server", "raylet"} <= names, sockets
        assert port in {p for _, _, p in sockets}, sockets
        assert not beyond_loopback(sockets), sockets
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops it all: the server, its Redis, its Ray
        assert proc.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(started, timeout=30)
        assert not alive, [process_name(p) for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
