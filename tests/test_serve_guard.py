"""The endpoint's first gate, without a Serve cluster: a request without the token is refused before
its body is read or validated (401, never 422), and a body is measured while it streams in (413 as
soon as it passes the limit, with or without Content-Length). Requests the gate lets through are
tested against the real Serve deployment in test_serve.py."""

from __future__ import annotations

import importlib
import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from deploy.evaluate.serve.guard import PROXY_CALLBACK, PROXY_TOKEN_ENV, RequestGuard, proxy_guard_env
from deploy.evaluate.serve.settings import set_guard

TOKEN = "s3cret-token"
LIMIT = 1024


@pytest.fixture(params=["replica", "proxy", "proxy-from-api-token"])
def client(request, monkeypatch):
    """A FastAPI app like the endpoint's: it parses JSON bodies itself (and turns errors while reading
    one into a 400), behind the gate: the replica's (its settings), or the one Serve's HTTP proxy
    builds from its environment (as `sftrl serve` sets it, or from $SFTRL_API_TOKEN as in Helm's pods)."""
    from fastapi import FastAPI

    seen: list[int] = []
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(payload: dict[str, Any]) -> dict[str, int]:
        seen.append(len(payload.get("pad", "")))
        return {"bytes": len(payload.get("pad", ""))}

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if request.param == "replica":
        app.add_middleware(RequestGuard)
        set_guard(LIMIT, TOKEN.encode())
    else:
        env = proxy_guard_env(LIMIT, TOKEN)
        assert TOKEN not in json.dumps(env)  # the proxy is given a digest, never the token
        if request.param == "proxy-from-api-token":
            del env[PROXY_TOKEN_ENV]
            monkeypatch.setenv("SFTRL_API_TOKEN", f"{TOKEN}\n")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        from ray.serve.config import HTTPOptions

        # what Serve's proxy runs at start (Ray reads the import path from its environment at import)
        http_util = importlib.import_module("ray.serve._private.http_util")
        monkeypatch.setattr(http_util, PROXY_CALLBACK, env[PROXY_CALLBACK])
        http_options = http_util.configure_http_middlewares(HTTPOptions())
        (gate,) = http_options.middlewares
        app.add_middleware(gate.cls, *gate.args, **gate.kwargs)
        set_guard(LIMIT, b"")  # the replica's settings hold no token here: the proxy's gate decides
    with TestClient(app) as c:
        c.seen = seen  # type: ignore[attr-defined]
        yield c
    set_guard(LIMIT, b"")


def _json(pad: int) -> bytes:
    return json.dumps({"pad": "x" * pad}).encode()


def test_no_token_is_refused_before_the_body_is_read(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.post(
            "/v1/echo", content=b"{not json" * 10, headers={**headers, "Content-Type": "application/json"}
        )
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    huge = client.post("/v1/echo", content=b"x" * (LIMIT * 100))  # oversized and anonymous: 401 first
    assert huge.status_code == 401 and client.seen == []
    assert client.get("/healthz").status_code == 200  # the one open path


def test_bodies_are_measured_while_they_stream(client):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    fits = LIMIT - len(_json(0))
    assert client.post("/v1/echo", content=_json(fits), headers=auth).json() == {"bytes": fits}
    declared = client.post("/v1/echo", content=_json(fits + 1), headers=auth)
    assert declared.status_code == 413 and "larger than 1024" in declared.json()["detail"]

    def chunks():  # no Content-Length: chunked transfer, measured chunk by chunk
        body = _json(4 * LIMIT)
        for i in range(0, len(body), 256):
            yield body[i : i + 256]

    chunked = client.post("/v1/echo", content=chunks(), headers=auth)
    assert chunked.status_code == 413, chunked.text  # not FastAPI's 400 "error parsing the body"
    small = client.post("/v1/echo", content=iter([_json(10)[:5], _json(10)[5:]]), headers=auth)
    assert small.json() == {"bytes": 10}  # a small chunked body reaches the app whole
    assert client.seen == [fits, 10]  # the handler never saw the big bodies
    bad = client.post("/v1/echo", content=b"{}", headers={**auth, "Content-Length": "12x"})
    assert bad.status_code in (400, 413)  # a malformed length is refused, never trusted


def test_an_unset_token_lets_nothing_through(client):
    set_guard(LIMIT, b"")
    assert client.post("/v1/echo", content=b"{}", headers={"Authorization": "Bearer "}).status_code == 401


def test_a_proxy_without_a_token_lets_only_the_open_paths_through(monkeypatch):
    from fastapi import FastAPI

    from deploy.evaluate.serve.guard import proxy_middlewares

    for key in ("SFTRL_API_TOKEN", PROXY_TOKEN_ENV):
        monkeypatch.delenv(key, raising=False)
    app = FastAPI()
    app.get("/healthz")(lambda: {"status": "ok"})
    app.get("/v1/checkpoints")(lambda: [])
    (gate,) = proxy_middlewares()
    app.add_middleware(gate.cls, *gate.args, **gate.kwargs)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        for auth in ("Bearer ", "Bearer x", f"Bearer {TOKEN}"):
            assert c.get("/v1/checkpoints", headers={"Authorization": auth}).status_code == 401


def test_tokens_are_stripped_wherever_they_come_from(monkeypatch, tmp_path):
    """A Secret made from a file (`kubectl create secret --from-file`) ends in a newline; the token
    must still match what clients send."""
    from deploy.evaluate.serve.settings import ServeSettings

    monkeypatch.setenv("SFTRL_API_TOKEN", f"{TOKEN}\n")
    assert ServeSettings().resolved_token() == TOKEN
    monkeypatch.delenv("SFTRL_API_TOKEN")
    assert ServeSettings(token=f"  {TOKEN}\r\n").resolved_token() == TOKEN
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    assert ServeSettings(token_file=str(tmp_path / "token")).resolved_token() == TOKEN
