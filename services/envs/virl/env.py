"""``sftrl/VIRL-v0``: follow street directions waypoint by waypoint (V-IRL-L text, V-IRL-VL image).

An episode is one route (see :mod:`services.envs.virl.routes` for how actions map to
waypoints). Each ``step`` scores one answer at the current waypoint with the pure verifier
:func:`services.verifier.virl.verify_virl`. A correct action moves the agent to the next
waypoint (``stop()`` at the destination ends the episode: ``terminated``, success). A wrong one
keeps it in place; after ``verify_iter`` failed attempts at one waypoint the episode ends as a
failure (``terminated``, with "attempts_exhausted" among the errors). Every step's info holds
``fields``, the parts of the answer scored apart (:func:`services.verifier.virl.answer_fields`;
evaluation reads them from the first attempt at each waypoint), and ``valid_action``.

Routes come from a synthetic city (``city``; route ``i`` of a city is fixed, and a plain
``reset(seed=...)`` draws ``i`` below :data:`ROUTE_POOL` from the env's generator, so indices
from ``ROUTE_POOL`` on serve as held-out routes) or from a file in the published V-IRL format
(``routes=path``). ``reset(options={"route_index": i})`` plays a given route.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from services.envs.base import (
    EnvOptions,
    FreeText,
    SftrlEnv,
    observation_space,
    pick_template,
    verify_iter_field,
)
from services.envs.virl import prompts
from services.envs.virl.city import ROUTE_POOL, display_name, generated_route, normalise_city_name
from services.envs.virl.headings import ActionSpace, allowed_actions
from services.envs.virl.published import load_published_routes
from services.envs.virl.render import render_views
from services.envs.virl.routes import Route, Waypoint
from services.verifier.virl import TRAINING_SPACE, VIRLStepTask, answer_fields, verify_virl

CITY_SEED = 0  # cities are fixed by name; the seed only chooses routes


class VIRLOptions(EnvOptions):
    mode: Literal["text", "image"] = "text"
    actions: ActionSpace = "absolute"
    city: str = Field("new_york", min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9 _\-]*$")
    verify_iter: int = verify_iter_field(2, per="waypoint")
    routes: str | None = Field(
        None,
        description="route file in the published V-IRL format; None: generated",
        json_schema_extra={"names_a_file": True},
    )
    image_size: int = Field(256, ge=32, le=2048, description="side of each of the 4 views (pixels)")

    @field_validator("routes")
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("routes must be a file path or null")
        return value


class VIRLEnv(SftrlEnv[VIRLOptions]):
    options_model = VIRLOptions

    def __init__(self, render_mode: str | None = None, **options: Any):
        super().__init__(render_mode, **options)
        o = self.options
        self._city = normalise_city_name(o.city)
        self._loaded: tuple[Route, ...] | None = (
            load_published_routes(o.routes, display_name(o.city)) if o.routes is not None else None
        )
        side = 2 * o.image_size
        self.observation_space = observation_space((side, side), o.mode == "image")
        self.action_space = FreeText(max_length=8192)
        self._route: Route | None = None
        self._route_index = -1
        self._index = 0
        self._done = True
        self._success = False
        self._last_text = ""
        self._image_cache: tuple[int, np.ndarray] | None = None

    # -- route bookkeeping -----------------------------------------------------------------------

    @property
    def num_routes(self) -> int:
        """Routes a plain reset draws from."""
        return len(self._loaded) if self._loaded is not None else ROUTE_POOL

    def _get_route(self, index: int) -> Route:
        if self._loaded is not None:
            if not 0 <= index < len(self._loaded):
                n = len(self._loaded)
                raise ValueError(f"route_index {index} is out of range; the route file holds {n}")
            return self._loaded[index]
        if not 0 <= index < 10**9:
            raise ValueError(f"route_index must lie in [0, 1e9), got {index}")
        return generated_route(self._city, CITY_SEED, index)

    @property
    def route(self) -> Route:
        if self._route is None:
            raise RuntimeError("no route yet; call reset() first")
        return self._route

    @property
    def waypoint(self) -> Waypoint:
        return self.route.waypoints[self._index]

    def _style_city(self) -> str:
        return self.route.city if self._loaded is not None else self._city

    def _image(self) -> np.ndarray:
        """The current views, rendered once per waypoint."""
        if self._image_cache is None or self._image_cache[0] != self._index:
            size, route_id = self.options.image_size, self.route.route_id
            img = render_views(self.waypoint, self._style_city(), size, route_id)
            self._image_cache = (self._index, img)
        return self._image_cache[1]

    def _obs(self) -> dict[str, Any]:
        # A fresh copy per step: callers keep observations and must not see them change.
        image = self._image().copy() if self.options.mode == "image" else None
        return {"text": self._last_text, "image": image}

    def _observation_line(self) -> str:
        return prompts.observation_text(self.waypoint, self.options.mode == "image")

    def _state_info(self) -> dict[str, Any]:
        wp = self.waypoint
        return {
            "expert_action": wp.action(self.options.actions),
            "at_intersection": wp.at_intersection,
            "waypoint_index": self._index,
            "num_waypoints": len(self.route.waypoints),
            "attempts_left": self.options.verify_iter - self._attempts,
            "route_id": self.route.route_id,
        }

    # -- gymnasium API -------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        o = self.options
        options = dict(options or {})
        unknown = set(options) - {"route_index"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; VIRL takes 'route_index'")
        index = options.get("route_index")
        if index is None:
            index = int(self.np_random.integers(self.num_routes))
        elif isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise ValueError(f"route_index must be an integer, got {index!r}")
        self._route, self._route_index = self._get_route(int(index)), int(index)
        self._index = 0
        self._reset_attempts()
        self._done, self._success = False, False
        self._image_cache = None
        template = pick_template(prompts.TEMPLATES, o.prompt_style, self.np_random)
        route = self.route
        self._last_text = prompts.first_prompt(
            template,  # type: ignore[arg-type]
            city=route.city,
            start=route.start,
            destination=route.destination,
            instructions=route.instructions,
            space=o.actions,
            verify_iter=o.verify_iter,
            observation=self._observation_line(),
        )
        info = {
            **self._state_info(),
            "city": route.city,
            "route_index": self._route_index,
            "start": route.start,
            "destination": route.destination,
            "instructions": list(route.instructions),
        }
        return self._obs(), info

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._done or self._route is None:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        task = self.current_task()
        verdict = verify_virl(task, action)
        attempt = self._score_attempt(verdict.success, verdict.reward, verdict.errors)
        terminated = attempt.exhausted
        if verdict.success:
            taken = self.waypoint.action(self.options.actions)
            if self._index == len(self.route.waypoints) - 1:
                terminated = self._success = True
                self._last_text = prompts.finished(self.route.destination)
            else:
                self._index += 1
                self._reset_attempts()  # attempts are counted per waypoint
                total = len(self.route.waypoints)
                self._last_text = prompts.after_correct(taken, self._index, total, self._observation_line())
        elif attempt.exhausted:
            self._last_text = prompts.failed(verdict.feedback)
        else:
            self._last_text = prompts.after_wrong(verdict.feedback, attempt.left, self._observation_line())
        self._done = terminated
        info = {
            **attempt.info(),
            **self._state_info(),  # attempts_left: of the waypoint the next answer is for
            "feedback": verdict.feedback,
            "success": self._success,
            "errors": attempt.errors,
            "details": verdict.details,
            "fields": answer_fields(task, action),
            # The action lies in the action space the prompt states (every attempt; the fields' first).
            "valid_action": verdict.details.get("action") in allowed_actions(self.options.actions),
        }
        return self._obs(), attempt.reward, terminated, False, info

    def render(self) -> Any:
        if self._route is None:
            return None
        if self.render_mode == "ansi":
            return self._last_text
        if self.render_mode == "rgb_array":
            return self._image().copy()
        return None

    # -- task and expert -----------------------------------------------------------------------

    def current_task(self) -> VIRLStepTask:
        wp = self.waypoint
        expected, training = wp.action(self.options.actions), wp.action(TRAINING_SPACE)
        return VIRLStepTask(
            expected_action=expected,
            action_space=self.options.actions,
            at_intersection=wp.at_intersection,
            landmarks_left=wp.left,
            landmarks_right=wp.right,
            instruction=self.route.instructions[wp.instruction_index],
            training_action=training if training != expected else None,
        )

    def _answer(self, action: str) -> str:
        task = self.current_task()
        return json.dumps(
            {
                prompts.ANSWER_KEYS[0]: prompts.describe(self.waypoint),
                prompts.ANSWER_KEYS[1]: task.instruction,
                prompts.ANSWER_KEYS[2]: action,
            }
        )

    def expert_answer(self) -> str:
        return self._answer(self.current_task().expected_action)

    def wrong_answer(self, rng: np.random.Generator) -> str:
        """A well-formed answer with a true observation but another action of the active space."""
        expected = self.current_task().expected_action
        others = [a for a in allowed_actions(self.options.actions) if a != expected]
        # Plausible slips: walking on where a turn is due, turning the wrong way, stopping early.
        return self._answer(others[int(rng.integers(len(others)))])
