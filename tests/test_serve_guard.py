"""The endpoint's first gate, without a Serve cluster: a request without the token is refused before
its body is read or validated (401, never 422), and a body is measured while it streams in (413 as
soon as it passes the limit, with or without Content-Length). Requests the gate lets through are
tested against the real Serve deployment in test_serve.py."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from deploy.serve.guard import RequestGuard
from deploy.serve.settings import set_guard

TOKEN = "s3cret-token"
LIMIT = 1024


@pytest.fixture
def client():
    seen: list[int] = []

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.append(len(body))
        return JSONResponse({"bytes": len(body)})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/v1/echo", echo, methods=["POST"]), Route("/healthz", health)])
    app.add_middleware(RequestGuard)
    set_guard(LIMIT, TOKEN.encode())
    with TestClient(app) as c:
        c.seen = seen  # type: ignore[attr-defined]
        yield c
    set_guard(LIMIT, b"")


def test_no_token_is_refused_before_the_body_is_read(client):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = client.post("/v1/echo", content=b"{not json" * 10, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    huge = client.post("/v1/echo", content=b"x" * (LIMIT * 100))  # oversized and anonymous: 401 first
    assert huge.status_code == 401 and client.seen == []
    assert client.get("/healthz").status_code == 200  # the one open path


def test_bodies_are_measured_while_they_stream(client):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/echo", content=b"x" * LIMIT, headers=auth).json() == {"bytes": LIMIT}
    declared = client.post("/v1/echo", content=b"x" * (LIMIT + 1), headers=auth)
    assert declared.status_code == 413 and "larger than 1024" in declared.json()["detail"]

    def chunks():  # no Content-Length: chunked transfer, measured chunk by chunk
        for _ in range(64):
            yield b"y" * 256

    chunked = client.post("/v1/echo", content=chunks(), headers=auth)
    assert chunked.status_code == 413 and client.seen == [LIMIT]  # the handler never saw the big bodies
    bad = client.post("/v1/echo", content=b"{}", headers={**auth, "Content-Length": "12x"})
    assert bad.status_code in (400, 413)  # a malformed length is refused, never trusted


def test_an_unset_token_lets_nothing_through(client):
    set_guard(LIMIT, b"")
    assert client.post("/v1/echo", content=b"{}", headers={"Authorization": "Bearer "}).status_code == 401


def test_tokens_are_stripped_wherever_they_come_from(monkeypatch, tmp_path):
    """A Secret made from a file (`kubectl create secret --from-file`) ends in a newline; the token
    must still match what clients send."""
    from deploy.serve.settings import ServeSettings

    monkeypatch.setenv("SFTRL_API_TOKEN", f"{TOKEN}\n")
    assert ServeSettings().resolved_token() == TOKEN
    monkeypatch.delenv("SFTRL_API_TOKEN")
    assert ServeSettings(token=f"  {TOKEN}\r\n").resolved_token() == TOKEN
    (tmp_path / "token").write_text(f"{TOKEN}\n")
    assert ServeSettings(token_file=str(tmp_path / "token")).resolved_token() == TOKEN
