"""``sftrl/GeneralPoints-v0``: make the target (24) from four cards, with sequential revision.

One episode is one hand. Each ``step`` scores one attempt with the pure verifier; a failed attempt
returns the feedback as the next user turn, until the answer is right (``terminated``) or
``verify_iter`` attempts are spent (``terminated`` as a failure, with an extra -1).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from services.envs.base import (
    EnvOptions,
    FreeText,
    SftrlEnv,
    observation_space,
    pick_template,
    verify_iter_field,
)
from services.envs.general_points.cards import Card, SuitSet, deal, hand_from_names
from services.envs.general_points.prompts import TEMPLATES, build_prompt, feedback_turn
from services.envs.general_points.reasoning import REQUEST, Reasoning, reasoning_text
from services.envs.general_points.render import render_cards
from services.verifier.face_rules import (
    MAX_VALUE,
    MIN_VALUE,
    NAMED_RULES,
    RANDOM,
    TRAINING_RULE,
    FaceValues,
    canonical_rule,
    draw_face_values,
    parse_face_rule,
)
from services.verifier.general_points import REWARD_EXHAUSTED, GPTask, card_value, verify_general_points
from services.verifier.gp_fields import answer_fields, cards_named
from services.verifier.points_solver import solve

RuleSpec = str | list[int]


class GeneralPointsOptions(EnvOptions):
    mode: Literal["text", "image"] = "text"
    face_cards: RuleSpec = Field(
        "as_10",
        description="the face-card rule the prompt states: as_10, as_11_12_13, values 'J,Q,K' such as "
        "'4,7,2', or random (drawn per episode from face_range, never a face_held_out rule)",
    )
    face_range: tuple[int, int] = Field(
        (MIN_VALUE, MAX_VALUE), description="values drawn by face_cards=random"
    )
    face_held_out: list[RuleSpec] = Field(
        default_factory=lambda: list(NAMED_RULES), description="rules face_cards=random never draws"
    )
    face_equal_share: float = Field(
        0.0, ge=0, le=1, description="face_cards=random: share of rules with J, Q, K all equal (else ~0.6%)"
    )
    scored_face_cards: RuleSpec | None = Field(
        None,
        description="fake-rule control: score answers by this rule while the prompt states face_cards "
        "(a model that ignores the prompt scores high)",
    )
    training_face_cards: RuleSpec = Field(
        TRAINING_RULE, description="the rule adherence is compared against (the training rule)"
    )
    target: int = Field(24, ge=1, le=10_000)
    suits: SuitSet = "black"
    verify_iter: int = verify_iter_field(5)
    image_size: int = Field(1200, ge=32, le=4096, description="side of the square table picture (pixels)")
    reasoning: Reasoning = Field(
        "none",
        description="none, or short/long: the prompt asks for reasoning in <think></think> before "
        "the answer, and the expert writes that many tried formulas before its own",
    )

    @field_validator("face_cards", "training_face_cards", "scored_face_cards", mode="before")
    @classmethod
    def _one_spelling(cls, rule: object) -> object:
        return None if rule is None else canonical_rule(rule)

    @field_validator("face_held_out", mode="before")
    @classmethod
    def _held_out_spelling(cls, rules: object) -> object:
        if not isinstance(rules, list) or len(rules) > 2197:
            raise ValueError("face_held_out is a list of rules")
        return [canonical_rule(r) for r in rules]

    @model_validator(mode="after")
    def _fixed_rules(self) -> GeneralPointsOptions:
        low, high = self.face_range
        if not MIN_VALUE <= low <= high <= MAX_VALUE:
            raise ValueError(f"face_range must satisfy {MIN_VALUE} <= low <= high <= {MAX_VALUE}")
        if RANDOM in (self.training_face_cards, self.scored_face_cards) or RANDOM in self.face_held_out:
            raise ValueError("only face_cards may be random; the other rules are fixed values")
        if self.scored_face_cards is not None and self.face_cards == RANDOM:
            raise ValueError("the fake-rule control states a fixed rule: give face_cards explicitly")
        return self

    def held_out_values(self) -> list[FaceValues]:
        return [v for v in map(parse_face_rule, self.face_held_out) if v is not None]


class GeneralPointsEnv(SftrlEnv[GeneralPointsOptions]):
    options_model = GeneralPointsOptions
    exhausted_reward = REWARD_EXHAUSTED

    def __init__(self, render_mode: str | None = None, **options: Any):
        super().__init__(render_mode, **options)
        o = self.options
        self.observation_space = observation_space((o.image_size, o.image_size), o.mode == "image")
        self.action_space = FreeText(max_length=8192)
        self._cards: tuple[Card, ...] = ()
        self._task: GPTask | None = None
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
        stated = parse_face_rule(o.face_cards)
        if stated is None:
            stated = draw_face_values(
                self.np_random, *o.face_range, held_out=o.held_out_values(), equal_share=o.face_equal_share
            )
        scored = stated if o.scored_face_cards is None else parse_face_rule(o.scored_face_cards)
        training = parse_face_rule(o.training_face_cards)
        assert scored is not None and training is not None  # fixed rules, checked by the options
        if options.get("cards") is not None:
            self._cards = hand_from_names(options["cards"], self.np_random, scored, o.suits, o.target)
        else:
            need_face = stated != NAMED_RULES[TRAINING_RULE] or scored != stated
            self._cards = deal(self.np_random, scored, o.suits, o.target, need_face)
        names = tuple(c.rank for c in self._cards)
        numbers = tuple(card_value(r, scored) for r in names)
        self._task = GPTask(
            names, numbers, o.target, check_recognition=o.mode == "image",
            stated_numbers=tuple(card_value(r, stated) for r in names),
            training_numbers=tuple(card_value(r, training) for r in names),
            suits=tuple(c.suit for c in self._cards),
        )  # fmt: skip
        self._reset_attempts()
        self._done = False
        self._image = render_cards(self._cards, o.image_size) if o.mode == "image" else None
        template = pick_template(TEMPLATES, o.prompt_style, self.np_random)
        card_text = ", ".join(c.label for c in self._cards) if o.mode == "text" else None
        self._last_text = build_prompt(template, target=o.target, face_values=stated, cards=card_text)
        if o.reasoning != "none":
            self._last_text += "\n" + REQUEST
        info = {
            "cards": list(names),
            "suits": [c.suit for c in self._cards],
            "face_values": list(stated),
            "rule": canonical_rule(list(stated)),
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
        attempt = self._score_attempt(verdict.success, verdict.reward, verdict.errors)
        terminated = verdict.success or attempt.exhausted
        self._done = terminated
        if not self._done:
            self._last_text = feedback_turn(verdict.feedback, attempt.left, self.options.target)
        else:
            self._last_text = verdict.feedback
        info: dict[str, Any] = {
            "feedback": verdict.feedback,
            "success": verdict.success,
            "errors": attempt.errors,
            **attempt.info(),
            "details": verdict.details,
            "fields": answer_fields(self._task, action),
            "cards_named": cards_named(self._task, action),  # of the hand's 4: recognition per card
        }
        if self._task.check_recognition:  # an unreadable answer names no cards: not a recognition
            info["recognized_correctly"] = not {"wrong_recognition", "malformed_answer"} & set(attempt.errors)
        # A fresh copy per step: callers keep observations, and must not see them change.
        image = None if self._image is None else self._image.copy()
        return {"text": self._last_text, "image": image}, attempt.reward, terminated, False, info

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
            "number": list(task.stated_numbers or task.numbers),
            "formula": f"{formula}={task.target}",
        }
        return reasoning_text(task, formula, self.options.reasoning) + json.dumps(payload)

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
