"""The one trajectory schema shared by rollout (writer) and learner (reader). Typed and versioned.

An episode is a list of turns. Each turn records exactly what the engine saw and produced:
``prompt_ids`` (the whole conversation so far, chat template applied, generation prompt included),
``response_ids`` and their sampling ``response_logprobs``, then the environment's reward and flags.
Only response tokens were produced by the model; prompts and feedback are never trained on, which
:meth:`Turn.loss_mask` and :meth:`Trajectory.flatten` make explicit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sftrl.files import atomic_file

SCHEMA_VERSION = 1


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_ids: list[int]
    response_ids: list[int]
    response_logprobs: list[float]
    response_text: str
    reward: float
    terminated: bool = False
    truncated: bool = False
    policy_version: int = 0
    num_images: int = 0  # images in this turn's prompt: the first ``num_images`` of the episode's images
    info: dict[str, Any] = Field(default_factory=dict)  # success, errors, feedback, recognized_correctly...

    @model_validator(mode="after")
    def _lengths_agree(self) -> Turn:
        if len(self.response_logprobs) != len(self.response_ids):
            raise ValueError(
                f"{len(self.response_logprobs)} log-probs for {len(self.response_ids)} response tokens"
            )
        return self

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    def loss_mask(self) -> list[int]:
        """1 for tokens the model produced, 0 for the prompt (over prompt_ids + response_ids)."""
        return [0] * len(self.prompt_ids) + [1] * len(self.response_ids)


class Trajectory(BaseModel):
    """One episode played by one policy against one environment instance."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    episode_id: str
    group_id: str  # samples of the same task share it (group-relative methods: GRPO, RLOO)
    env_id: str
    env_options: dict[str, Any] = Field(default_factory=dict)
    seed: int
    model: str = ""
    sampling: dict[str, Any] = Field(default_factory=dict)
    logprobs: Literal["raw", "processed"] = "raw"  # raw: log-softmax of the model's logits at T = 1
    messages: list[dict[str, Any]] = Field(default_factory=list)  # the conversation, text only
    images: list[str] = Field(default_factory=list)  # base64 PNG, in the order the prompts show them
    turns: list[Turn] = Field(default_factory=list)
    success: bool = False
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def total_reward(self) -> float:
        return float(sum(t.reward for t in self.turns))

    @property
    def policy_versions(self) -> list[int]:
        return sorted({t.policy_version for t in self.turns})

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(t.response_ids) for t in self.turns)

    def decoded_images(self, count: int | None = None) -> list[Any]:
        """The first ``count`` images (all by default) as PIL images."""
        import base64
        import io

        from PIL import Image

        return [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in self.images[:count]]

    def flatten(self) -> tuple[list[int], list[int], list[float]]:
        """The whole conversation as one token sequence with its loss mask and log-probs.

        Valid when every turn's prompt extends the previous turn's prompt + response (true for
        ChatML-style templates); raises ValueError otherwise, so no learner trains on a silently
        misaligned sequence.
        """
        ids: list[int] = []
        mask: list[int] = []
        logps: list[float] = []
        for i, turn in enumerate(self.turns):
            if turn.prompt_ids[: len(ids)] != ids:
                raise ValueError(f"turn {i} of {self.episode_id} does not extend the previous turns")
            new_prompt = turn.prompt_ids[len(ids) :]
            ids += new_prompt + turn.response_ids
            mask += [0] * len(new_prompt) + [1] * len(turn.response_ids)
            logps += [0.0] * len(new_prompt) + list(turn.response_logprobs)
        return ids, mask, logps


# -- files ----------------------------------------------------------------------------------------


def write_jsonl(trajectories: Iterable[Trajectory], path: str | Path) -> Path:
    """Write one trajectory per line (atomically: the file appears complete or not at all)."""
    path = Path(path)
    with atomic_file(path) as fh:
        for traj in trajectories:
            fh.write(traj.model_dump_json() + "\n")
    return path


def read_jsonl(path: str | Path) -> Iterator[Trajectory]:
    """Read trajectories back; a malformed line is a ValueError naming the file and line."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Trajectory.model_validate_json(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: not a valid trajectory: {exc}") from None


def write_parquet(trajectories: Iterable[Trajectory], path: str | Path) -> Path:
    """One row per trajectory; nested fields kept as JSON text so any reader can open the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for t in trajectories:
        data = t.model_dump(mode="json")
        rows.append({
            "schema_version": t.schema_version, "episode_id": t.episode_id, "group_id": t.group_id,
            "env_id": t.env_id, "seed": t.seed, "model": t.model, "success": t.success,
            "total_reward": t.total_reward, "num_turns": len(t.turns),
            "num_generated_tokens": t.num_generated_tokens,
            "policy_versions": t.policy_versions, "json": json.dumps(data),
        })  # fmt: skip
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows), fh)
    return path


def read_parquet(path: str | Path) -> list[Trajectory]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["json"])
    return [Trajectory.model_validate_json(text) for text in table.column("json").to_pylist()]


def write_trajectories(trajectories: Iterable[Trajectory], path: str | Path) -> Path:
    """Pick the format from the suffix: .parquet or .jsonl."""
    suffix = Path(path).suffix
    if suffix == ".parquet":
        return write_parquet(trajectories, path)
    if suffix in (".jsonl", ".json"):
        return write_jsonl(trajectories, path)
    raise ValueError(f"unknown trajectory file type {suffix!r}; use .jsonl or .parquet")


def read_trajectories(path: str | Path) -> list[Trajectory]:
    suffix = Path(path).suffix
    if suffix == ".parquet":
        return read_parquet(path)
    return list(read_jsonl(path))
