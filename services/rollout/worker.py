"""A rollout worker: one vLLM engine, its chat formatter, and the environments of its episodes.

Used in-process by tests and small runs, and as a Ray actor (``RolloutActor``) in the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.rollout.config import EngineConfig, RolloutConfig, SamplingConfig
from services.rollout.conversation import ChatFormatter
from services.rollout.engine import Generation, VLLMEngine
from services.rollout.env_pool import EnvPool, EpisodeSpec, LocalEnvs, RayEnvPool
from services.rollout.episodes import play_episodes
from sftrl.models.processor import load_processor
from sftrl.threads import apply_cpu_threads, cpu_threads
from sftrl.trajectory import Trajectory


def build_formatter(model_path: str, tokenizer: Any) -> ChatFormatter:
    """A VLM gets its processor (its chat template places images); a text model its tokenizer."""
    processor = load_processor(model_path)
    if processor is not None:
        return ChatFormatter(tokenizer=processor.tokenizer, processor=processor)
    return ChatFormatter(tokenizer=tokenizer)


class RolloutWorker:
    def __init__(self, config: RolloutConfig):
        self.config = config
        if config.engine.device == "cpu":
            apply_cpu_threads(cpu_threads(config.engine.threads, config.num_actors))
        self.engine = VLLMEngine(config.engine)
        self.formatter = build_formatter(self.engine.model_path, self.engine.tokenizer)
        self.envs: EnvPool = RayEnvPool(config.env_actors) if config.env_actors > 0 else LocalEnvs()

    @classmethod
    def on_model(cls, model: str, engine: EngineConfig | None = None) -> RolloutWorker:
        """A worker (in-process engine) on ``model`` with ``engine``'s other settings (default ones)."""
        engine = (engine or EngineConfig()).model_copy(update={"model": model})
        return cls(RolloutConfig(engine=engine))

    def play(self, specs: Sequence[EpisodeSpec], sampling: SamplingConfig | None = None) -> list[Trajectory]:
        return play_episodes(
            self.engine,
            self.formatter,
            self.envs,
            specs,
            sampling or self.config.sampling,
            self.config.engine.model,
        )

    def chat(self, messages: list[dict[str, str]], sampling: SamplingConfig) -> Generation:
        """One reply to a text chat (the evaluation endpoint's chat completions)."""
        prompt = self.formatter.chat_prompt(messages)
        return self.engine.generate([prompt], self.engine.sampling_params(sampling, n=1))[0][0]

    def update_weights(self, weights: Any, version: int | None = None) -> int:
        new_version = self.engine.update_weights(weights)
        if version is not None:
            self.engine.set_policy_version(version)
            new_version = version
        return new_version

    def policy_version(self) -> int:
        return self.engine.policy_version

    def ping(self) -> bool:
        return True

    def shutdown(self) -> None:
        self.engine.shutdown()
