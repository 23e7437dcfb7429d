"""What the registry holds: runs, their checkpoints, and evaluations of checkpoints (pydantic records).

A checkpoint is named ``RUN@STEP`` (the global training step); ``RUN`` alone means its latest one.
The files on disk are the truth; these records are an index over them (``sftrl registry resync``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # always fullmatch: "$" would accept "id\n"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def checkpoint_id(run_id: str, step: int) -> str:
    return f"{run_id}@{step}"


def parse_checkpoint_ref(ref: str) -> tuple[str, int | None]:
    """``RUN@STEP`` -> (RUN, STEP); ``RUN`` or ``RUN@latest`` -> (RUN, None). Raises ValueError."""
    run_id, sep, step = ref.partition("@")
    if not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"bad checkpoint reference {ref!r}: expected RUN or RUN@STEP (e.g. quickstart@300)")
    if not sep or step == "latest":
        return run_id, None
    if not step.isdigit() or len(step) > 12:
        raise ValueError(f"bad checkpoint reference {ref!r}: STEP must be a number or 'latest'")
    return run_id, int(step)


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")  # records written by a newer sftrl still load


class RunRecord(Record):
    run_id: str
    run_dir: str
    # "lost": it was running and its driver stopped renewing its lease (killed without a word)
    status: Literal["running", "finished", "failed", "interrupted", "lost"] = "running"
    lease_until: float = 0.0  # unix time; a running run whose lease ran out is lost (0: none)
    model: str = ""
    created: str = Field(default_factory=utc_now)
    updated: str = Field(default_factory=utc_now)
    config: dict[str, Any] = {}  # the resolved config of the run


class CheckpointRecord(Record):
    checkpoint_id: str
    run_id: str
    step: int  # the global training step
    path: str
    stage: str = ""
    stage_index: int = 0
    stage_step: int = 0
    final: bool = False  # the last checkpoint of its stage
    flops: float = 0.0  # training compute so far
    metrics: dict[str, float] = {}  # the evaluation run at this step, if any
    created: str = Field(default_factory=utc_now)


class SuiteSpec(BaseModel):
    """An environment and its options: what an evaluation plays."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field("custom", max_length=64)
    env: str = Field(max_length=128)
    options: dict[str, Any] = {}


EvalStatus = Literal["queued", "running", "done", "failed", "cancelled"]
MAX_OUTCOMES = 65_536  # episodes x samples an evaluation record may list (the endpoint allows far fewer)


class EpisodeOutcomes(BaseModel):
    """Per episode of an evaluation, for analyses paired by task: its task (the environment seed),
    whether it succeeded, and per field of its first answers ``[right, counted]``; columns, not rows."""

    model_config = ConfigDict(extra="forbid")

    task: list[int] = Field([], max_length=MAX_OUTCOMES)
    success: list[Literal[0, 1]] = Field([], max_length=MAX_OUTCOMES)
    fields: dict[str, list[tuple[int, int]]] = Field({}, max_length=64)


class EvaluationRecord(Record):
    eval_id: str
    checkpoint_id: str
    suite: SuiteSpec
    episodes: int
    seed: int
    samples: int = 1  # per task; > 1 adds pass@k
    sampling: dict[str, Any] = {}
    status: EvalStatus = "queued"
    episodes_done: int = 0
    metrics: dict[str, float] = {}
    outcomes: EpisodeOutcomes | None = None  # per episode, once done
    error: str | None = None
    note: str = ""  # e.g. which newer checkpoints of the run were skipped, and why
    lease_until: float = 0.0  # unix time; an active evaluation whose lease ran out is lost (0: none)
    owner: str = ""  # a hash of the caller's token (for per-caller limits), never the token
    created: str = Field(default_factory=utc_now)
    updated: str = Field(default_factory=utc_now)

    @property
    def progress(self) -> float:
        total = self.episodes * self.samples
        return self.episodes_done / total if total else 1.0
