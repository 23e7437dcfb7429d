"""The evaluation endpoint: a Ray Serve application with a FastAPI ingress.

Two deployments: ``SftrlAPI`` (HTTP, auth, validation, the registry) and ``EvalReplica`` (vLLM
engines on checkpoints, loaded on demand and kept warm up to a bound; autoscaled by the Serve
config). ``build_app`` is the import path a Serve config names (``deploy.evaluate.serve.app:build_app``).

Every route but ``/healthz`` needs ``Authorization: Bearer <token>`` (compared in constant time).
Bad requests get a 4xx with a message: 401 no/wrong token, 404 unknown checkpoint or evaluation,
400/422 bad suite or body, 400 a chat prompt longer than the model's context, 413 oversized body,
429 too many running evaluations or chats in flight for the token, 503 registry down, 504 a chat
completion that took too long.

Nothing a registry record says chooses how an engine runs: the replicas' engine settings are the
server's (``ServeSettings.engine``), and a suite taken from a run's record is checked as a client's.

An evaluation holds a lease in its record: the API replica renews it while it waits on the
evaluation replica, which renews it while it plays; if both stop (killed), the lease runs out and
the next POST of the same token marks it failed ("lost"), so it never blocks the token's limit.
``DELETE /v1/evaluations/{id}`` cancels one (its replica stops at the next chunk of episodes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from ray import serve

from deploy.evaluate.checkpoint import (
    EvalInputError,
    EvalRequest,
    UnknownCheckpoint,
    create_evaluation,
    error_text,
    execute_evaluation,
    load_rollout,
)
from deploy.evaluate.serve.engine_thread import EngineBusy, EngineThread
from deploy.evaluate.serve.guard import RequestGuard
from deploy.evaluate.serve.limits import ChatSlots
from deploy.evaluate.serve.loopback import keep_replica_grpc_on_loopback
from deploy.evaluate.serve.schemas import (
    ChatRequest,
    ChatResponse,
    CheckpointList,
    EvaluationCreated,
    EvaluationStatus,
    Health,
)
from deploy.evaluate.serve.settings import ServeSettings, set_guard
from services.rollout.config import SamplingConfig
from sftrl.registry import REGISTRY_ERRORS, CheckpointRecord, Registry, RegistryError
from sftrl.registry.store import ACTIVE

if TYPE_CHECKING:
    from services.rollout.worker import RolloutWorker

log = logging.getLogger(__name__)

EVAL_ID_PATTERN = r"^eval-[0-9a-f]{16}$"

api = FastAPI(
    title="sftrl evaluation endpoint",
    version="1",
    description="Registered checkpoints, their evaluations on ID/OOD suites, and chat completions.",
    openapi_url=None,  # served below, behind the token like every route but /healthz
    docs_url=None,
    redoc_url=None,
)


# -- middleware and error handlers: registered before @serve.ingress captures the app -------------


# Errors that are the caller's or the registry's, answered as such (never a 500).
@api.exception_handler(RegistryError)
async def _registry_error(_: Request, exc: RegistryError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _registry_down(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"registry unavailable: {type(exc).__name__}"}, status_code=503)


for _kind in REGISTRY_ERRORS:
    api.add_exception_handler(_kind, _registry_down)


api.add_middleware(RequestGuard)  # token, then body size while it streams: before any handler or parser


# -- the evaluation replicas -------------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=8)
class EvalReplica:
    """vLLM engines on checkpoints: loaded on demand, the ``warm_models`` most recent kept (LRU)."""

    def __init__(self, settings: ServeSettings):
        keep_replica_grpc_on_loopback()
        self.settings = settings
        self.registry = _registry(settings)
        self.engines: OrderedDict[str, Any] = OrderedDict()
        self.in_use: set[str] = set()  # the engines of the running evaluation: never evicted under it
        self.engine_thread = EngineThread()

    def _rollout(self, ckpt: CheckpointRecord, run_config: dict[str, Any]) -> RolloutWorker:
        if ckpt.path in self.engines:
            self.engines.move_to_end(ckpt.path)
            return self.engines[ckpt.path]
        while len(self.engines) >= self.settings.warm_models:
            idle = next((path for path in self.engines if path not in self.in_use), None)
            if idle is None:
                raise EngineBusy(ckpt.path)
            self.engines.pop(idle).shutdown()
        # the server's engine settings only: run_config is the run's record, which names nothing here
        roots, engine = self.settings.resolved_checkpoint_roots(), self.settings.replica_engine()
        rollout = load_rollout(ckpt, run_config, roots, engine=engine)
        self.engines[ckpt.path] = rollout
        return rollout

    def _evaluate(self, eval_id: str) -> str:
        def holding(ckpt: CheckpointRecord, run_config: dict[str, Any]) -> RolloutWorker:
            rollout = self._rollout(ckpt, run_config)
            self.in_use.add(ckpt.path)
            return rollout

        try:  # chats waiting meanwhile are answered between its chunks of episodes
            return execute_evaluation(self.registry, eval_id, holding, data_dir=self.settings.resolved_data_dir(),
                                      on_progress=lambda _: self.engine_thread.answer_waiting(),
                                      detailed_errors=False, lease_s=self.settings.lease_s, client=True,
                                      max_episodes=self.settings.max_episodes).status  # fmt: skip
        finally:
            self.in_use.clear()

    async def evaluate(self, eval_id: str) -> str:
        return await self.engine_thread.run(self._evaluate, eval_id)  # type: ignore[no-any-return]

    def _chat(
        self, checkpoint: str, messages: list[dict[str, str]], sampling: dict[str, Any]
    ) -> dict[str, Any]:
        """A reply, or ``{"refused": message}`` for a request the model cannot take (the ingress's 400)."""
        ckpt = self.registry.resolve_checkpoint(checkpoint)
        run = self.registry.get_run(ckpt.run_id)
        rollout = self._rollout(ckpt, run.config if run is not None else {})
        # imported once an engine exists: vLLM must be imported after the engine has set its environment
        from vllm.exceptions import VLLMValidationError

        refusal = context_refusal(len(rollout.formatter.chat_prompt(messages).token_ids),
                                  int(rollout.engine.config.max_model_len))  # fmt: skip
        if refusal:
            return {"refused": refusal}
        try:
            gen = rollout.chat(messages, SamplingConfig.model_validate(sampling))
        except VLLMValidationError as exc:  # vLLM's own checks of a request: about the request, no paths
            return {"refused": str(exc)[:500]}
        return {"checkpoint": ckpt.checkpoint_id, "text": gen.text, "finish_reason": gen.finish_reason,
                "prompt_tokens": len(gen.prompt_ids), "completion_tokens": len(gen.response_ids)}  # fmt: skip

    async def chat(
        self, checkpoint: str, messages: list[dict[str, str]], sampling: dict[str, Any]
    ) -> dict[str, Any]:
        return await self.engine_thread.run_between(self._chat, checkpoint, messages, sampling)  # type: ignore[no-any-return]

    def engine_settings(self) -> list[dict[str, Any]]:
        """The settings each warm engine runs with (for operators and tests, through a Serve handle;
        no HTTP route shows them: they hold server paths)."""
        return [rollout.engine.config.model_dump(mode="json") for rollout in self.engines.values()]


def context_refusal(prompt_tokens: int, context: int) -> str | None:
    """Why a chat prompt cannot be answered in ``context`` tokens (vLLM needs room for one more), or None."""
    if prompt_tokens < context:
        return None
    return (f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens for the "
            "prompt and the reply together: shorten the messages")  # fmt: skip


# -- the HTTP ingress ----------------------------------------------------------------------------------


def _registry(settings: ServeSettings) -> Registry:
    return Registry(settings.resolved_redis_url(), eval_ttl_s=int(settings.eval_ttl_days * 86400))


def _owner(token: str) -> str:
    """Evaluations record who asked by a hash of the token, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(api)
class SftrlAPI:
    def __init__(self, settings: ServeSettings, evaluator: Any):
        keep_replica_grpc_on_loopback()
        self.settings = settings
        self._token = settings.resolved_token().encode()
        self.registry = _registry(settings)
        self.evaluator = evaluator
        set_guard(settings.max_body_bytes, self._token)
        self._tasks: set[asyncio.Task[Any]] = set()
        # a slot outlives the longest chat, so one a killed replica never released lapses by itself
        self.chat_slots = ChatSlots(self.registry.redis, settings.max_concurrent_chats_per_token,
                                    settings.chat_timeout_s + 30)  # fmt: skip

    # Dependencies and handlers are methods so that they see this replica's settings.

    def authorize(self, request: Request) -> str:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
        return _owner(value.strip())

    @api.get("/healthz", response_model=Health)
    def healthz(self) -> Health:
        try:
            registry_ok = self.registry.ping()
        except REGISTRY_ERRORS:
            registry_ok = False
        return Health(status="ok", registry=registry_ok)

    @api.get("/openapi.json", include_in_schema=False)
    def openapi(self, request: Request) -> JSONResponse:
        self.authorize(request)
        return JSONResponse(api.openapi())

    @api.get("/v1/checkpoints", response_model=CheckpointList)
    def checkpoints(
        self,
        request: Request,
        run: str | None = Query(None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
    ) -> CheckpointList:
        self.authorize(request)
        if run is not None and self.registry.get_run(run) is None:
            raise HTTPException(404, f"unknown run {run!r}")
        return CheckpointList.public(self.registry.list_checkpoints(run))

    @api.post("/v1/evaluations", response_model=EvaluationCreated, status_code=202)
    async def create(self, body: EvalRequest, request: Request) -> EvaluationCreated:
        owner = self.authorize(request)
        active = self.registry.live_evaluations(owner)  # those whose lease ran out are marked lost here
        if len(active) >= self.settings.max_concurrent_evals_per_token:
            raise HTTPException(
                429, f"{len(active)} evaluations of this token are still running (limit "
                f"{self.settings.max_concurrent_evals_per_token}); poll them and retry",
            )  # fmt: skip
        try:
            record = create_evaluation(self.registry, body, owner, self.settings.max_episodes, client=True,
                                       data_dir=self.settings.resolved_data_dir(),
                                       roots=self.settings.resolved_checkpoint_roots(),
                                       lease_s=self.settings.lease_s)  # fmt: skip
        except UnknownCheckpoint as exc:
            raise HTTPException(404, str(exc)) from None
        except EvalInputError as exc:
            raise HTTPException(400, str(exc)) from None
        task = asyncio.create_task(self._track(record.eval_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return EvaluationCreated(
            id=record.eval_id, status=record.status, url=f"/v1/evaluations/{record.eval_id}"
        )

    async def _track(self, eval_id: str) -> None:
        """Run the evaluation on a replica, holding its lease meanwhile; a replica that dies or
        outlasts ``eval_timeout_s`` marks the evaluation failed."""
        renewing = asyncio.create_task(self._renew(eval_id))
        try:
            await asyncio.wait_for(self.evaluator.evaluate.remote(eval_id), self.settings.eval_timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported on the evaluation record
            if isinstance(exc, TimeoutError):
                error = f"timed out after {self.settings.eval_timeout_s:.0f} s"
            else:  # a remote traceback never reaches the client
                error = error_text(exc, False, f"evaluation {eval_id} on its replica")
            try:
                self.registry.finish_evaluation(eval_id, status="failed", error=error)
            except (*REGISTRY_ERRORS, RegistryError):
                pass
        finally:
            renewing.cancel()

    async def _renew(self, eval_id: str) -> None:
        """Renew the lease every third of it until the evaluation ends."""
        lease = self.settings.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            try:
                ev = await asyncio.to_thread(self.registry.renew_lease, eval_id, lease)
            except (*REGISTRY_ERRORS, RegistryError):
                continue
            if ev.status not in ACTIVE:
                return

    @api.delete("/v1/evaluations/{eval_id}", response_model=EvaluationStatus)
    def cancel(self, request: Request, eval_id: str = Path(pattern=EVAL_ID_PATTERN)) -> EvaluationStatus:
        """Cancel one of this token's evaluations (an ended one is returned as it is)."""
        owner = self.authorize(request)
        ev = self.registry.get_evaluation(eval_id)
        if ev is None or ev.owner != owner:
            raise HTTPException(404, f"unknown evaluation {eval_id!r}")
        return EvaluationStatus.from_record(self.registry.finish_evaluation(eval_id, status="cancelled"))

    @api.get("/v1/evaluations/{eval_id}", response_model=EvaluationStatus)
    def status(self, request: Request, eval_id: str = Path(pattern=EVAL_ID_PATTERN)) -> EvaluationStatus:
        self.authorize(request)
        ev = self.registry.get_evaluation(eval_id)
        if ev is None:
            raise HTTPException(404, f"unknown evaluation {eval_id!r}")
        return EvaluationStatus.from_record(ev)

    @api.post("/v1/chat/completions", response_model=ChatResponse)
    async def chat(self, body: ChatRequest, request: Request) -> ChatResponse:
        owner = self.authorize(request)
        if body.max_tokens > self.settings.max_chat_tokens:
            raise HTTPException(400, f"max_tokens must be at most {self.settings.max_chat_tokens}")
        try:
            ckpt = self.registry.resolve_checkpoint(body.model)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
        slot = self.chat_slots.take(owner)
        if slot is None:
            limit = self.settings.max_concurrent_chats_per_token
            raise HTTPException(429, f"{limit} chat completions of this token are in flight (limit {limit}); "
                                "retry when one has answered")  # fmt: skip
        try:
            out = await self._chat_on_replica(ckpt.checkpoint_id, body)
        finally:
            self.chat_slots.release(owner, slot)
        if "refused" in out:
            raise HTTPException(400, str(out["refused"]))
        return ChatResponse.build(f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), out)

    async def _chat_on_replica(self, checkpoint_id: str, body: ChatRequest) -> dict[str, Any]:
        sampling = {"temperature": body.temperature, "top_p": body.top_p, "max_tokens": body.max_tokens,
                    "seed": body.seed}  # fmt: skip
        messages = [m.model_dump() for m in body.messages]
        try:
            return await asyncio.wait_for(  # type: ignore[no-any-return]
                self.evaluator.chat.remote(checkpoint_id, messages, sampling), self.settings.chat_timeout_s
            )
        except TimeoutError:
            raise HTTPException(504, f"no answer within {self.settings.chat_timeout_s:.0f} s") from None


def build_app(args: dict[str, Any] | None = None) -> Any:
    """The Serve application (``import_path: deploy.evaluate.serve.app:build_app``; ``args``: ServeSettings)."""
    settings = ServeSettings.model_validate(args or {})
    settings.resolved_token()  # fail at deploy time, not at the first request
    settings.resolved_redis_url()
    return SftrlAPI.bind(settings, EvalReplica.bind(settings))
