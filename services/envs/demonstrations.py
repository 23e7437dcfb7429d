"""Expert demonstrations for SFT, written as LLaVA-style conversation JSON and chat-messages JSONL.

An episode is played by the environment's own expert (``expert_answer``). A share of episodes are
revision episodes: the first attempt is a plausible mistake (``wrong_answer``), the environment's
feedback becomes the next user turn, and the expert then corrects it, which is what sequential
revision at RL time looks like.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

import services.envs  # noqa: F401  (registers the environments)
from services.envs.base import SftrlEnv
from sftrl.files import atomic_file, write_atomic

MAX_TURNS = 256


@dataclass
class Demonstration:
    """One expert episode: alternating user/assistant turns, images attached to user turns."""

    episode_id: str
    messages: list[dict[str, str]]
    images: list[np.ndarray | None]  # per message; the image shown with that user turn, if new
    meta: dict[str, Any] = field(default_factory=dict)


def _new_image(image: Any, previous: Any) -> np.ndarray | None:
    if image is None:
        return None
    if previous is not None and (image is previous or np.array_equal(image, previous)):
        return None
    return np.asarray(image)


def play_expert_episode(
    env: gym.Env, seed: int, revise: bool, rng: np.random.Generator, episode_id: str
) -> Demonstration:
    """Play one episode with the expert; with ``revise`` the first attempt is a wrong one."""
    expert = env.unwrapped
    if not isinstance(expert, SftrlEnv):
        raise TypeError(f"{type(expert).__name__} has no expert; demonstrations need an sftrl environment")
    # A revision needs a second attempt; with one attempt the episode is a plain expert one.
    revise = revise and expert.options.verify_iter >= 2
    obs, info = env.reset(seed=seed)
    rule = info.get("rule")  # the rule the prompt stated, where the environment has rules as data
    messages = [{"role": "user", "content": obs["text"]}]
    images = [_new_image(obs["image"], None)]
    last_image = obs["image"]
    total_reward, wrong_left = 0.0, revise
    for _ in range(MAX_TURNS):
        answer = expert.wrong_answer(rng) if wrong_left else expert.expert_answer()
        wrong_left = False
        obs, reward, terminated, truncated, info = env.step(answer)
        total_reward += float(reward)
        messages.append({"role": "assistant", "content": answer})
        images.append(None)
        if terminated or truncated:
            break
        messages.append({"role": "user", "content": obs["text"]})
        images.append(_new_image(obs["image"], last_image))
        last_image = obs["image"]
    else:
        raise RuntimeError(f"episode {episode_id} did not finish within {MAX_TURNS} turns")
    meta = {"seed": seed, "revision": revise, "success": bool(info.get("success")), "reward": total_reward}
    if rule is not None:
        meta["rule"] = rule
    return Demonstration(episode_id, messages, images, meta)


def generate_demonstrations(
    env_id: str,
    env_options: dict[str, Any],
    episodes: int,
    seed: int = 0,
    revision_fraction: float = 0.3,
) -> Iterator[Demonstration]:
    """Yield ``episodes`` expert episodes; episode i uses seed ``seed + i`` (reproducible)."""
    if not 0.0 <= revision_fraction <= 1.0:
        raise ValueError("revision_fraction must lie in [0, 1]")
    env = gym.make(env_id, **env_options)
    rng = np.random.default_rng(seed)
    try:
        for i in range(episodes):
            revise = bool(rng.random() < revision_fraction)
            demo = play_expert_episode(env, seed + i, revise, rng, f"{env_id.split('/')[-1]}-{seed + i}")
            if not demo.meta["success"]:
                raise RuntimeError(
                    f"the expert failed episode {demo.episode_id}: the environment is inconsistent"
                )
            yield demo
    finally:
        env.close()


class DemonstrationWriter:
    """Streams demonstrations to LLaVA JSON and/or chat JSONL, saving images as PNG files. Use it as a
    context manager: each file appears under its final name only when the block ends without error."""

    def __init__(self, llava_path: Path | None, chat_path: Path | None, image_dir: Path):
        self.llava_path, self.chat_path, self.image_dir = llava_path, chat_path, image_dir
        for path in (llava_path, chat_path):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        self._llava: list[dict[str, Any]] = []
        self._files = ExitStack()  # the chat file streams into a temporary that the stack commits
        self._chat_file = self._files.enter_context(atomic_file(chat_path)) if chat_path else None
        self.count = 0

    def __enter__(self) -> DemonstrationWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if kind is None:
            self.close()
        else:  # the temporary is removed; nothing appears under the final names
            self._files.__exit__(kind, error, tb)

    def _save_images(self, demo: Demonstration) -> list[str | None]:
        paths: list[str | None] = []
        for i, image in enumerate(demo.images):
            if image is None:
                paths.append(None)
                continue
            self.image_dir.mkdir(parents=True, exist_ok=True)
            target = self.image_dir / f"{demo.episode_id}-{i}.png"
            Image.fromarray(image).save(target)
            base = (self.llava_path or self.chat_path).parent  # type: ignore[union-attr]
            paths.append(target.relative_to(base).as_posix())
        return paths

    def add(self, demo: Demonstration) -> None:
        paths = self._save_images(demo)
        if self.llava_path is not None:
            turns, image_list = [], []
            for msg, path in zip(demo.messages, paths):
                value = msg["content"]
                if path is not None:
                    value, _ = f"<image>\n{value}", image_list.append(path)
                turns.append({"from": "human" if msg["role"] == "user" else "gpt", "value": value})
            record: dict[str, Any] = {"id": demo.episode_id, "conversations": turns, "meta": demo.meta}
            if image_list:
                record["image"] = image_list[0] if len(image_list) == 1 else image_list
            self._llava.append(record)
        if self._chat_file is not None:
            messages: list[dict[str, Any]] = []
            for msg, path in zip(demo.messages, paths):
                if path is None:
                    messages.append(dict(msg))
                else:
                    content = [
                        {"type": "image_url", "image_url": {"url": path}},
                        {"type": "text", "text": msg["content"]},
                    ]
                    messages.append({"role": msg["role"], "content": content})
            self._chat_file.write(
                json.dumps({"id": demo.episode_id, "messages": messages, "meta": demo.meta}) + "\n"
            )
        self.count += 1

    def close(self) -> None:
        """Finish both files; each appears under its final name only when complete."""
        self._files.close()
        if self.llava_path is not None:
            write_atomic(self.llava_path, json.dumps(self._llava, indent=1))
