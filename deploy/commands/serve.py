"""``sftrl serve``: the evaluation endpoint on this machine (local Ray, local Redis unless REDIS_URL)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from rich.console import Console

from deploy.evaluate.serve.guard import PROXY_CALLBACK, proxy_guard_env
from deploy.evaluate.serve.settings import ServeSettings, local_token_file
from sftrl.config import build
from sftrl.hardware import describe_precision, resolve_precision
from sftrl.registry.local_server import LocalRedis


def serve_command(
    console: Console, host: str, port: int, settings: dict[str, Any], address: str | None
) -> None:
    from ray import serve

    from deploy.evaluate.serve.app import build_app
    from sftrl.ray_setup import init_ray

    args = dict(settings)
    if not (args.get("token_file") or os.environ.get("SFTRL_API_TOKEN")):
        args["token_file"] = str(local_token_file())
        console.print(f"API token: {args['token_file']} (or set SFTRL_API_TOKEN)", soft_wrap=True)
    # the settings and the token are checked before anything starts (a bad one leaves nothing running)
    valid = build(ServeSettings, args, source="serve settings")
    token = valid.resolved_token()
    value, reason = resolve_precision("auto", valid.device)
    console.print(f"[dim]{describe_precision(value, reason)}, for runs whose config says auto[/]", highlight=False,
                  soft_wrap=True)  # fmt: skip
    server = None
    if not (args.get("redis_url") or os.environ.get("REDIS_URL")):
        server = LocalRedis()
        args["redis_url"] = server.start()
    if address or os.environ.get("RAY_ADDRESS"):
        console.print("[dim]joining a cluster: its HTTP proxies check the token and body size only where its nodes "
                      f"set {PROXY_CALLBACK} (the Helm chart does); the API replicas check them anyway[/]",
                      soft_wrap=True)  # fmt: skip
    else:  # the local Ray's processes inherit this: its HTTP proxy refuses before it streams a body on
        os.environ.update(proxy_guard_env(valid.max_body_bytes, token))
    try:
        init_ray(address)
    except BaseException:
        if server is not None:
            server.release()
        raise
    # a shell without job control starts background commands with SIGINT ignored, and Python keeps that:
    # Ctrl-C (or a supervisor's SIGINT) must still stop the server through the clean-up below
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(args), name="sftrl", route_prefix="/")
        console.print(f"serving on http://{host}:{port}  (GET /healthz, /v1/checkpoints; POST /v1/evaluations, "
                      "/v1/chat/completions; /openapi.json); Ctrl-C stops", soft_wrap=True)  # fmt: skip
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        serve.shutdown()
        if server is not None:
            server.release()
