"""The ingress's first gate, as plain ASGI middleware: the bearer token is checked before any byte of
a body is read (401 before 422), and a body is measured while it streams in (413 as soon as it passes
the limit, chunked or not; at most the limit is held, then handed to the app), so an anonymous or
oversized request never costs more than the limit in memory.

Serve runs a copy of the app in each ingress replica; the token and the limit live in
:mod:`deploy.evaluate.serve.settings` and are set by the replica (``set_guard``).
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.responses import JSONResponse

from deploy.evaluate.serve.settings import body_limit, guard_token

OPEN_PATHS = ("/healthz",)


def token_ok(authorization: str) -> bool:
    """``Bearer <token>`` with this replica's token, compared in constant time."""
    scheme, _, value = authorization.partition(" ")
    token = guard_token()
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)


class RequestGuard:
    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope.get("path") not in OPEN_PATHS and not token_ok(headers.get("authorization", "")):
            reply = JSONResponse(
                {"detail": "missing or wrong bearer token"}, 401, {"WWW-Authenticate": "Bearer"}
            )
            await reply(scope, receive, send)
            return
        limit = body_limit()
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
