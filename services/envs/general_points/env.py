"""``sftrl/GeneralPoints-v0``: make the target (24) from four cards, with sequential revision.

One episode is one hand. Each ``step`` scores one attempt with the pure verifier; a failed attempt
returns the feedback as the next user turn, until the answer is right (``terminated``) or
``verify_iter`` attempts are spent (``truncated``, with an extra -1).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from services.envs.base import EnvOptions, FreeText, SftrlEnv, observation_space, pick_template
from services.envs.general_points.cards import Card, SuitSet, deal, hand_from_names
from services.envs.general_points.prompts import TEMPLATES, build_prompt, feedback_turn
from services.envs.general_points.render import render_cards
from services.verifier.general_points import (
    REWARD_EXHAUSTED,
    FaceCardRule,
    GPTask,
    card_value,
    verify_general_points,
)
from services.verifier.points_solver import solve


class GeneralPointsOptions(EnvOptions):
    mode: Literal["text", "image"] = "text"
    face_cards: FaceCardRule = "as_10"
    target: int = Field(24, ge=1, le=10_000)
    suits: SuitSet = "black"
    verify_iter: int = Field(5, ge=1, le=100)
    image_size: int = Field(1200, ge=32, le=4096, description="side of the square table picture (pixels)")


class GeneralPointsEnv(SftrlEnv[GeneralPointsOptions]):
    options_model = GeneralPointsOptions

    def __init__(self, render_mode: str | None = None, **options: Any):
        super().__init__(render_mode, **options)
        o = self.options
        self.observation_space = observation_space((o.image_size, o.image_size), o.mode == "image")
        self.action_space = FreeText(max_length=8192)
        self._cards: tuple[Card, ...] = ()
        self._task: GPTask | None = None
        self._attempts = 0
        self._done = True
        self._image: np.ndarray | None = None
        self._last_text = ""

    # -- gymnasium API -------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        o = self.options
        options = dict(options or {})
        unknown = set(options) - {"cards"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; GeneralPoints takes 'cards'")
        if options.get("cards") is not None:
            self._cards = hand_from_names(options["cards"], self.np_random, o.face_cards, o.suits, o.target)
        else:
            self._cards = deal(self.np_random, o.face_cards, o.suits, o.target)
        names = tuple(c.rank for c in self._cards)
        numbers = tuple(card_value(r, o.face_cards) for r in names)
        self._task = GPTask(names, numbers, o.target, check_recognition=o.mode == "image")
        self._attempts = 0
        self._done = False
        self._image = render_cards(self._cards, o.image_size) if o.mode == "image" else None
        template = pick_template(TEMPLATES, o.prompt_style, self.np_random)
        card_text = ", ".join(c.label for c in self._cards) if o.mode == "text" else None
        self._last_text = build_prompt(template, target=o.target, face_cards=o.face_cards, cards=card_text)
        info = {
            "cards": list(names),
            "suits": [c.suit for c in self._cards],
            "numbers": list(numbers),
            "solutions": list(solve(numbers, o.target)),
            "target": o.target,
            "attempt": 0,
        }
        return {"text": self._last_text, "image": self._image}, info

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._done or self._task is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        verdict = verify_general_points(self._task, action)
        self._attempts += 1
        reward = verdict.reward
        errors = verdict.errors
        terminated = verdict.success
        truncated = not terminated and self._attempts >= self.options.verify_iter
        if truncated:
            reward += REWARD_EXHAUSTED
            errors = (*errors, "attempts_exhausted")
        self._done = terminated or truncated
        left = self.options.verify_iter - self._attempts
        if not self._done:
            self._last_text = feedback_turn(verdict.feedback, left, self.options.target)
        else:
            self._last_text = verdict.feedback
        info: dict[str, Any] = {
            "feedback": verdict.feedback,
            "success": verdict.success,
            "errors": errors,
            "attempt": self._attempts,
            "attempts_left": left,
            "details": verdict.details,
        }
        if self._task.check_recognition:  # an unreadable answer names no cards: not a recognition
            info["recognized_correctly"] = not {"wrong_recognition", "malformed_answer"} & set(errors)
        # A fresh copy per step: callers keep observations, and must not see them change.
        image = None if self._image is None else self._image.copy()
        return {"text": self._last_text, "image": image}, reward, terminated, truncated, info

    def render(self) -> Any:
        if self.render_mode == "ansi":
            return self._last_text
        if self.render_mode == "rgb_array":
            return render_cards(self._cards, self.options.image_size) if self._cards else None
        return None

    # -- task and expert -----------------------------------------------------------------------

    def current_task(self) -> GPTask:
        if self._task is None:
            raise RuntimeError("no hand dealt yet; call reset() first")
        return self._task

    def _answer(self, formula: str) -> str:
        task = self.current_task()
        payload = {
            "cards": list(task.cards),
            "number": list(task.numbers),
            "formula": f"{formula}={task.target}",
        }
        return json.dumps(payload)

    def expert_answer(self) -> str:
        task = self.current_task()
        solutions = solve(task.numbers, task.target)
        # The shortest solution is the most natural one to imitate.
        return self._answer(min(solutions, key=lambda s: (len(s), s)))

    def wrong_answer(self, rng: np.random.Generator) -> str:
        """A well-formed formula over the right numbers that misses the target (an honest mistake)."""
        task = self.current_task()
        ops = "+-*"
        for _ in range(64):
            order = [task.numbers[int(i)] for i in rng.permutation(len(task.numbers))]
            formula = str(order[0])
            for n in order[1:]:
                formula += ops[int(rng.integers(len(ops)))] + str(n)
            if verify_general_points(task, self._answer(formula)).errors == ("wrong_value",):
                return self._answer(formula)
        return self._answer("+".join(str(n) for n in task.numbers) + "+1")
