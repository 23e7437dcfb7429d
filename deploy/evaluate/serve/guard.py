"""The ingress's first gate, as plain ASGI middleware: the bearer token is checked before any byte of
a body is read (401 before 422), and a body is measured while it streams in (413 as soon as it passes
the limit, chunked or not; at most the limit is held, then handed to the app), so an anonymous or
oversized request never costs more than the limit in memory.

Serve runs a copy of the app in each ingress replica; the token and the limit live in
:mod:`deploy.evaluate.serve.settings` and are set by the replica (``set_guard``).

The same gate also runs in Serve's HTTP proxy (:func:`proxy_middlewares`, Ray's
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``): the proxy otherwise streams a body to the replica as
fast as the client sends it and holds what the replica has not yet refused (tens of MiB of a 1 GiB
chunked body on 2 cores). The proxy learns the limit and a SHA-256 of the token from its environment
(:func:`proxy_guard_env`), never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from deploy.evaluate.serve.settings import body_limit, guard_token

OPEN_PATHS = ("/healthz",)
# the proxy's own routes (Ray's health check and route table), answered by the proxy as before
PROXY_OPEN_PATHS = ("/-/healthz", "/-/routes")
PROXY_CALLBACK = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_LIMIT_ENV, PROXY_TOKEN_ENV = "SFTRL_PROXY_BODY_LIMIT", "SFTRL_PROXY_TOKEN_SHA256"


def token_digest(token: str | bytes) -> str:
    """SHA-256 (hex) of a token, stripped; empty for no token (then nothing matches it)."""
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw.strip()).hexdigest() if raw.strip() else ""


def token_ok(authorization: str, digest: str) -> bool:
    """``Bearer <token>`` whose :func:`token_digest` is ``digest``, compared in constant time."""
    scheme, _, value = authorization.partition(" ")
    return bool(digest) and scheme.lower() == "bearer" and hmac.compare_digest(token_digest(value), digest)


def proxy_guard_env(limit: int, token: str) -> dict[str, str]:
    """The environment that puts the gate in front of Serve's HTTP proxy: set it before the Ray
    processes start (the proxy reads it once, when it starts)."""
    return {PROXY_CALLBACK: f"{__name__}:proxy_middlewares", PROXY_LIMIT_ENV: str(limit),
            PROXY_TOKEN_ENV: token_digest(token)}  # fmt: skip


def proxy_middlewares() -> list[Middleware]:
    """Called by Serve's HTTP proxy at start: the gate with this environment's limit and token digest
    (``$SFTRL_API_TOKEN``'s when no digest is set, as in the Helm chart's pods). No token: every route
    but the open ones is refused, as the replica would."""
    api_token = os.environ.get("SFTRL_API_TOKEN", "")
    digest = os.environ.get(PROXY_TOKEN_ENV, "").strip() or token_digest(api_token)
    raw = os.environ.get(PROXY_LIMIT_ENV, "")
    limit = int(raw) if raw.isdigit() else body_limit()
    open_paths = OPEN_PATHS + PROXY_OPEN_PATHS
    return [Middleware(RequestGuard, limit=limit, token_sha256=digest, open_paths=open_paths)]


class RequestGuard:
    """With no arguments, the replica's gate (its settings' limit and token); with ``limit`` and
    ``token_sha256``, the proxy's."""

    def __init__(self, app: Any, limit: int | None = None, token_sha256: str | None = None,
                 open_paths: tuple[str, ...] = OPEN_PATHS):  # fmt: skip
        self.app, self.limit, self.digest, self.open_paths = app, limit, token_sha256, open_paths

    def _authorized(self, authorization: str) -> bool:
        return token_ok(authorization, token_digest(guard_token()) if self.digest is None else self.digest)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        authorized = self._authorized(headers.get("authorization", ""))
        if scope.get("path") not in self.open_paths and not authorized:
            reply = JSONResponse(
                {"detail": "missing or wrong bearer token"}, 401, {"WWW-Authenticate": "Bearer"}
            )
            await reply(scope, receive, send)
            return
        limit = body_limit() if self.limit is None else self.limit
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            await JSONResponse({"detail": "bad Content-Length"}, 400)(scope, receive, send)
            return
        if declared is not None and int(declared) > limit:
            await JSONResponse({"detail": f"body larger than {limit} bytes"}, 413)(scope, receive, send)
            return
        # The body is read here, up to the limit, and replayed to the app: FastAPI turns any error raised
        # while it reads a body into a 400, so the 413 must be answered before the app reads anything.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await JSONResponse({"detail": f"body larger than {limit} bytes"}, 413)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the client to go away
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)
