"""What every sftrl environment shares: spaces for text/image observations, prompt styles,
option validation, and the expert interface used to write SFT demonstrations.

Environments know nothing of models: an action is the raw answer text a policy produced, and an
observation's ``"text"`` is always the content of the next user turn (the first prompt after
``reset``, then the feedback or the next observation after each ``step``). Callers keep the
conversation history.

Every task allows ``verify_iter`` answers (sequential revision) and counts them the same way
(:meth:`SftrlEnv._score_attempt`): each step's info carries ``attempt`` and ``attempts_left``, and
the answer that spends the last attempt adds "attempts_exhausted" to the errors and ends the episode
(``terminated``: a failure is a terminal state of the task, not a time limit).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, Field

from sftrl.config import ConfigError, StrictModel, build

PromptStyle = Literal["default", "compact", "diverse"]


class FreeText(gym.Space[str]):
    """Any string up to ``max_length`` characters (gymnasium's ``Text`` only admits a fixed charset)."""

    def __init__(self, max_length: int = 65536, seed: int | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_length = max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        length = int(self.np_random.integers(0, 32))
        letters = 'abcdefghijklmnopqrstuvwxyz {}":,0123456789+-*/()='
        return "".join(letters[i] for i in self.np_random.integers(0, len(letters), size=length))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"FreeText(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FreeText) and other.max_length == self.max_length


class OptionalImage(gym.Space[Any]):
    """An RGB ``uint8`` image of a fixed shape, or ``None`` in text mode."""

    def __init__(self, height: int, width: int, enabled: bool, seed: int | None = None):
        super().__init__(shape=(height, width, 3) if enabled else None, dtype=np.uint8, seed=seed)
        self.enabled = enabled
        self.height, self.width = height, width

    def sample(self, mask: Any = None, probability: Any = None) -> np.ndarray | None:
        if not self.enabled:
            return None
        return self.np_random.integers(0, 256, size=(self.height, self.width, 3), dtype=np.uint8)

    def contains(self, x: Any) -> bool:
        if not self.enabled:
            return x is None
        return isinstance(x, np.ndarray) and x.shape == (self.height, self.width, 3) and x.dtype == np.uint8

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"OptionalImage({self.height}x{self.width}, enabled={self.enabled})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptionalImage) and (other.height, other.width, other.enabled) == (
            self.height,
            self.width,
            self.enabled,
        )


def observation_space(image_hw: tuple[int, int], image_mode: bool) -> gym.spaces.Dict:
    return gym.spaces.Dict(
        {"text": FreeText(), "image": OptionalImage(image_hw[0], image_hw[1], enabled=image_mode)}
    )


def verify_iter_field(default: int, per: str = "episode") -> Any:
    """``verify_iter`` with a task's own default (the bounds and meaning are every task's)."""
    return Field(
        default, ge=1, le=100, description=f"answers allowed per {per} before the episode ends as a failure"
    )


class EnvOptions(StrictModel):
    """Options every environment takes; each environment extends this model."""

    prompt_style: PromptStyle = "default"
    verify_iter: int = verify_iter_field(1)


@dataclass(frozen=True)
class Attempt:
    """One scored answer, after the attempt bookkeeping every task shares."""

    reward: float  # the verifier's, plus the task's penalty when this answer spent the last attempt
    errors: tuple[str, ...]  # the verifier's, plus "attempts_exhausted" then
    exhausted: bool  # a failed answer that spent the last attempt: the episode ends as a failure
    number: int  # 1-based, counted since the episode (or, in V-IRL, the waypoint) began
    left: int

    def info(self) -> dict[str, int]:
        return {"attempt": self.number, "attempts_left": self.left}


OptionsT = TypeVar("OptionsT", bound=EnvOptions)


def pick_template(templates: dict[str, Any], style: PromptStyle, rng: np.random.Generator) -> Any:
    """Choose the template for ``style``: ``"diverse"`` draws one of the ``"diverse"`` paraphrases."""
    if style == "diverse":
        choices = templates["diverse"]
        return choices[int(rng.integers(len(choices)))]
    return templates[style]


class SftrlEnv(gym.Env, Generic[OptionsT]):
    """Base of the sftrl environments: validated options and the expert interface.

    Subclasses set ``options_model`` and implement ``reset``/``step`` plus the two expert methods,
    which the demonstration writer uses (they read the current state, never a model).
    """

    metadata = {"render_modes": ["rgb_array", "ansi"]}
    options_model: ClassVar[type[EnvOptions]] = EnvOptions
    exhausted_reward: ClassVar[float] = 0.0  # added to the reward of the answer that spends the last attempt
    _attempts: int = 0

    def __init__(self, render_mode: str | None = None, **options: Any):
        self.options: OptionsT = self.parse_options(options)  # type: ignore[assignment]
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(
                f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}"
            )
        self.render_mode = render_mode

    def _reset_attempts(self) -> None:
        """Start counting attempts afresh (a new episode; in V-IRL also a new waypoint)."""
        self._attempts = 0

    def _score_attempt(self, success: bool, reward: float, errors: Sequence[str]) -> Attempt:
        """Count one answer. A failed answer that spends the last of ``verify_iter`` attempts
        exhausts them: the episode ends as a failure, which is a terminal state of the task (the
        caller returns ``terminated=True``; ``truncated`` is for limits outside the task)."""
        self._attempts += 1
        left = max(self.options.verify_iter - self._attempts, 0)
        exhausted = not success and left == 0
        if exhausted:
            reward, errors = reward + self.exhausted_reward, (*errors, "attempts_exhausted")
        return Attempt(reward, tuple(errors), exhausted, self._attempts, left)

    @classmethod
    def parse_options(cls, options: dict[str, Any]) -> BaseModel:
        return build(cls.options_model, options, source=f"options for {cls.__name__}")

    @abstractmethod
    def expert_answer(self) -> str:
        """The answer text an expert gives at the current state (always correct)."""

    @abstractmethod
    def wrong_answer(self, rng: np.random.Generator) -> str:
        """A plausible but wrong answer at the current state (for revision demonstrations)."""
