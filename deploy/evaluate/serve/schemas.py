"""HTTP schemas of the evaluation endpoint (request bodies are strict: unknown fields are 422s)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sftrl.registry.records import CheckpointRecord, EpisodeOutcomes, EvalStatus, EvaluationRecord, SuiteSpec


class Health(BaseModel):
    status: Literal["ok"]
    registry: bool


class PublicCheckpoint(BaseModel):
    """A checkpoint as clients see it: no server path."""

    checkpoint_id: str
    run_id: str
    step: int
    stage: str
    stage_step: int
    final: bool
    flops: float
    metrics: dict[str, float]
    created: str


class CheckpointList(BaseModel):
    checkpoints: list[PublicCheckpoint]

    @classmethod
    def public(cls, records: list[CheckpointRecord]) -> CheckpointList:
        fields = PublicCheckpoint.model_fields
        return cls(
            checkpoints=[
                PublicCheckpoint(**{k: v for k, v in r.model_dump().items() if k in fields}) for r in records
            ]
        )


class EvaluationCreated(BaseModel):
    id: str
    status: EvalStatus
    url: str


class EvaluationStatus(BaseModel):
    id: str
    checkpoint: str
    suite: SuiteSpec
    status: EvalStatus
    progress: float = Field(description="episodes played / episodes asked, 0..1")
    episodes: int
    seed: int
    metrics: dict[str, float] = Field(
        description="success, reward, turns, response_tokens, error_rate/<kind>, recognition_accuracy (image modes)"
    )
    outcomes: EpisodeOutcomes | None = Field(
        None,
        description="per episode, once done: task (environment seed), success, first answers' fields "
        "[right, counted]; for differences paired by task",
    )
    error: str | None = None
    note: str = Field(
        "", description="e.g. newer checkpoints of the run skipped because they failed verification"
    )
    created: str
    updated: str

    @classmethod
    def from_record(cls, ev: EvaluationRecord) -> EvaluationStatus:
        return cls(id=ev.eval_id, checkpoint=ev.checkpoint_id, suite=_without_paths(ev.suite), status=ev.status,
                   progress=ev.progress, episodes=ev.episodes, seed=ev.seed, metrics=ev.metrics,
                   outcomes=ev.outcomes, error=ev.error, note=ev.note, created=ev.created, updated=ev.updated)  # fmt: skip


def _without_paths(suite: SuiteSpec) -> SuiteSpec:
    """The suite with file options shown by file name only (a run's own suites may hold server paths)."""
    from pathlib import PurePath

    from services.envs import file_options

    try:
        named = file_options(suite.env)
    except ValueError:
        return suite
    options = {
        k: PurePath(v).name if k in named and isinstance(v, str) else v for k, v in suite.options.items()
    }
    return suite.model_copy(update={"options": options})


# -- OpenAI-compatible chat completions ----------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_768)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (stream=False...)

    model: str = Field(min_length=1, max_length=200, description="a checkpoint: RUN@STEP, RUN@latest or RUN")
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=4096)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    n: Literal[1] = 1
    stream: Literal[False] = False


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage

    @classmethod
    def build(cls, completion_id: str, created: int, out: dict[str, Any]) -> ChatResponse:
        usage = Usage(prompt_tokens=out["prompt_tokens"], completion_tokens=out["completion_tokens"],
                      total_tokens=out["prompt_tokens"] + out["completion_tokens"])  # fmt: skip
        message = ChatMessage(role="assistant", content=out["text"])
        return cls(id=completion_id, created=created, model=out["checkpoint"],
                   choices=[ChatChoice(index=0, message=message, finish_reason=out["finish_reason"])],
                   usage=usage)  # fmt: skip
