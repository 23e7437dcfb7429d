"""The multi-turn loop: a batch of episodes advances together, one batched engine call per turn.

Each turn sends every live episode's whole conversation to the engine, scores the answers in the
environments (which call the verifiers), appends the feedback as the next user turn, and retires
finished episodes, until every episode has ended (success, attempts spent, or context full).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from services.rollout.config import SamplingConfig
from services.rollout.conversation import ChatFormatter, Conversation
from services.rollout.engine import Generation, VLLMEngine
from services.rollout.env_pool import EnvPool, EpisodeSpec, StepResult
from sftrl.trajectory import Trajectory, Turn

MAX_TURNS = 128


@dataclass
class _Live:
    spec: EpisodeSpec
    conv: Conversation
    traj: Trajectory
    last_image: Any = None


def _png_b64(image: Image.Image) -> str:
    import base64
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _as_pil(image: Any) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def _new_image(image: Any, last: Any) -> Any:
    if image is None or (last is not None and np.array_equal(np.asarray(image), np.asarray(last))):
        return None
    return image


def request_seed(base: int | None, episode_id: str, turn: int) -> int | None:
    """A per-request sampling seed, so an episode samples the same way whatever its batch."""
    if base is None:
        return None
    digest = hashlib.blake2b(f"{base}/{episode_id}/{turn}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def _record_turn(
    state: _Live, gen: Generation, result: StepResult, version: int, max_tokens: int, max_len: int
) -> str | None:
    """Append the turn ``gen`` played and the environment's answer ``result`` to the episode; returns
    why the episode ended ("" when the environment ended it), or None when it goes on."""
    obs, reward, terminated, truncated, info = result
    turn = Turn(
        prompt_ids=gen.prompt_ids, response_ids=gen.response_ids, response_logprobs=gen.response_logprobs,
        response_text=gen.text, reward=reward, terminated=terminated, truncated=truncated,
        policy_version=version, num_images=len(state.conv.images),
        info=info | {"finish_reason": gen.finish_reason},
    )  # fmt: skip
    state.traj.turns.append(turn)
    if info.get("success"):
        state.traj.success = True
    if terminated or truncated:
        state.conv.finish(gen.text)
        return ""
    image = _new_image(obs.get("image"), state.last_image)
    state.conv.add_turn(
        gen.response_ids, gen.text, obs["text"], _as_pil(image) if image is not None else None
    )
    if image is not None:
        state.last_image = obs.get("image")
    if len(state.conv.token_ids) + max_tokens > max_len:
        turn.truncated = True  # no room for another answer: the episode ends here
        return "context_full"
    return None


def play_episodes(
    engine: VLLMEngine,
    formatter: ChatFormatter,
    envs: EnvPool,
    specs: Sequence[EpisodeSpec],
    sampling: SamplingConfig,
    model_name: str = "",
    on_done: Callable[[Trajectory], None] | None = None,
) -> list[Trajectory]:
    """Play ``specs`` to the end and return their trajectories, in the order of ``specs``."""
    max_len = engine.config.max_model_len
    live: list[_Live] = []
    for spec, (obs, info) in zip(specs, envs.reset_many(specs), strict=True):
        image = obs.get("image")
        conv = Conversation.start(formatter, obs["text"], _as_pil(image) if image is not None else None)
        traj = Trajectory(
            episode_id=spec.episode_id, group_id=spec.group_id, env_id=spec.env_id,
            env_options=spec.env_options, seed=spec.seed, model=model_name,
            sampling=sampling.model_dump(mode="json"), meta={"reset_info": info},
        )  # fmt: skip
        live.append(_Live(spec, conv, traj, image))
    finished: dict[str, Trajectory] = {}

    def retire(state: _Live, reason: str | None = None) -> None:
        state.traj.messages = state.conv.text_messages
        state.traj.images = [_png_b64(img) for img in state.conv.images]  # the learner needs them (VLM RL)
        if reason:
            state.traj.meta["ended_by"] = reason
        finished[state.spec.episode_id] = state.traj
        if on_done is not None:
            on_done(state.traj)

    for _turn in range(MAX_TURNS):
        if not live:
            break
        params = [
            engine.sampling_params(
                sampling, n=1, seed=request_seed(sampling.seed, s.spec.episode_id, len(s.traj.turns))
            )
            for s in live
        ]
        generations = engine.generate([s.conv.prompt() for s in live], params)
        answers = [(s.spec.episode_id, gens[0].text) for s, gens in zip(live, generations, strict=True)]
        results = envs.step_many(answers)
        still: list[_Live] = []
        done_ids: list[str] = []
        for state, gens, result in zip(live, generations, results, strict=True):
            ended = _record_turn(state, gens[0], result, engine.policy_version, sampling.max_tokens, max_len)
            if ended is None:
                still.append(state)
            else:
                done_ids.append(state.spec.episode_id)
                retire(state, ended)
        envs.release(done_ids)
        live = still
    for state in live:  # only reached if MAX_TURNS ran out
        state.traj.turns[-1].truncated = True
        retire(state, "max_turns")
    envs.release([s.spec.episode_id for s in live])
    return [finished[s.episode_id] for s in specs]
