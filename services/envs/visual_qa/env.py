"""``sftrl/VisualQA-v0``: verifiable visual questions, generated or read from a benchmark file.

One episode is one question. The observation is the prompt (and the picture in image mode); the
action is the model's reply text; reward is 1.0 for a correct final answer, else 0.0. With
``verify_iter > 1`` a wrong reply gets feedback and another attempt, as in the papers' sequential
revision setting; a wrong reply on the last attempt ends the episode (``terminated``, a failure).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from services.envs.base import EnvOptions, FreeText, SftrlEnv, observation_space, verify_iter_field
from services.envs.visual_qa.benchmark import BenchmarkItem, load_benchmark
from services.envs.visual_qa.generators import GENERATOR_KINDS, GeneratorKind, generate
from services.envs.visual_qa.prompts import build_prompt, choose_template, retry_text
from services.envs.visual_qa.questions import GenSpec, Problem, boxed, finalize, format_number, is_wrong
from services.verifier.visual_qa import LETTERS, QATask, correct_choice_index, parse_number, verify_visual_qa
from sftrl.config import ConfigError

IMAGE_CACHE_SIZE = 64  # letterboxed benchmark pictures kept in memory


class VisualQAOptions(EnvOptions):
    """Options of ``sftrl/VisualQA-v0`` (unknown keys are errors)."""

    mode: Literal["image", "text"] = "image"
    kinds: list[GeneratorKind] = Field(default_factory=lambda: list(GENERATOR_KINDS), min_length=1)
    answer_format: Literal["mixed", "multiple_choice", "numeric"] = "mixed"
    dataset: str | None = Field(
        None,
        description="a benchmark file (.jsonl/.json/.parquet); None: generated questions",
        json_schema_extra={"names_a_file": True},
    )
    verify_iter: int = verify_iter_field(1)
    image_size: int = Field(default=384, ge=64, le=4096)
    difficulty: int | None = Field(default=None, ge=1, le=5)  # None: drawn per episode

    @field_validator("kinds")
    @classmethod
    def _distinct(cls, kinds: list[str]) -> list[str]:
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"kinds must not repeat, got {kinds}")
        return kinds


def letterbox(image: Image.Image, size: int) -> np.ndarray:
    """Scale to fit a ``size`` square, centred on white, so any picture fits the fixed space."""
    width, height = image.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    board = Image.new("RGB", (size, size), (255, 255, 255))
    board.paste(image.resize(new, Image.Resampling.BICUBIC), ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.array(board, dtype=np.uint8)


def _number_wrongs(answer: str) -> tuple[str, ...]:
    parsed = parse_number(answer)
    if parsed is None:
        return ()
    suffix = "%" if parsed.percent else ""
    v = parsed.value
    candidates = (v + 1, v * 2 if v != 0 else Fraction(3), v - 1, v + 10, -v if v != 0 else Fraction(7))
    return tuple(format_number(c) + suffix for c in candidates)


def benchmark_problem(item: BenchmarkItem) -> Problem:
    """A benchmark row as a served problem; the canonical answer of a choice row is its letter."""
    task = item.task()
    answer = item.answer
    wrongs: tuple[str, ...]
    if item.answer_type == "choice":
        index = (
            correct_choice_index(task) if item.choices else LETTERS.index(answer.strip("() .").upper()[:1])
        )
        assert index is not None  # checked when the file was loaded
        answer = LETTERS[index]
        count = len(item.choices) if item.choices else 4
        wrongs = tuple(LETTERS[i] for i in range(max(count, index + 2)) if i != index)
    elif item.answer_type == "number":
        wrongs = _number_wrongs(answer)
    else:
        flip = {"yes": "No", "no": "Yes", "true": "False", "false": "True"}
        wrongs = (flip.get(answer.strip().lower(), f"not {answer}"), f"{answer} and more")
    task = QATask(item.question_id, answer, item.choices, item.answer_type, tolerance=item.tolerance)
    return Problem(
        question_id=item.question_id,
        kind=item.kind,
        difficulty=item.difficulty,
        question=item.question,
        scene=None,
        choices=item.choices,
        answer=answer,
        task=task,
        solution="",
        wrong_pool=wrongs,
    )


class VisualQAEnv(SftrlEnv[VisualQAOptions]):
    """Single-question episodes over generated or benchmark visual questions.

    ``reset(seed=s)`` always serves the same question for the same options; with a dataset,
    ``reset(options={"index": i})`` serves row ``i``.
    """

    options_model = VisualQAOptions

    def __init__(self, render_mode: str | None = None, **options: Any):
        super().__init__(render_mode=render_mode, **options)
        opts = self.options
        self.image_mode = opts.mode == "image"
        self.benchmark: tuple[BenchmarkItem, ...] | None = (
            load_benchmark(opts.dataset) if opts.dataset else None
        )
        self.observation_space = observation_space((opts.image_size, opts.image_size), self.image_mode)
        self.action_space = FreeText()
        self._problem: Problem | None = None
        self._image: np.ndarray | None = None
        self._text = ""
        self._done = True
        self._pictures: OrderedDict[int, np.ndarray] = OrderedDict()

    # -- episode -----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        super().reset(seed=seed)
        index = self._requested_index(options)
        rng = self.np_random
        template = choose_template(self.options.prompt_style, rng)
        if self.benchmark is not None:
            if index is None:
                index = int(rng.integers(len(self.benchmark)))
            self._problem = benchmark_problem(self.benchmark[index])
            self._image = self._benchmark_picture(index) if self.image_mode else None
        else:
            self._problem = self._generated_problem(rng)
            image = self._problem.image
            self._image = np.array(image, dtype=np.uint8) if image is not None else None
        problem = self._problem
        self._text = build_prompt(
            template,
            problem.question,
            problem.choices,
            problem.task.answer_type,
            problem.scene,
            self.image_mode,
        )
        self._reset_attempts()
        self._done = False
        info = {
            "question_id": problem.question_id,
            "kind": problem.kind,
            "answer": problem.answer,
            "choices": list(problem.choices) if problem.choices else None,
            "difficulty": problem.difficulty,
            "answer_type": problem.task.answer_type,
        }
        return self._observation(), info

    def step(self, action: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._problem is None:
            raise RuntimeError("call reset() before step()")
        if self._done:
            raise RuntimeError("the episode has ended; call reset() to start a new one")
        verdict = verify_visual_qa(self._problem.task, action)
        attempt = self._score_attempt(verdict.success, verdict.reward, verdict.errors)
        terminated = verdict.success or attempt.exhausted
        self._done = terminated
        self._text = (
            verdict.feedback
            if verdict.success
            else retry_text(verdict.feedback, verdict.errors, attempt.left)
        )
        info = {
            "feedback": self._text,
            "success": verdict.success,
            "errors": list(attempt.errors),
            "extracted_answer": verdict.details.get("extracted_answer"),
            "question_id": self._problem.question_id,
            **attempt.info(),
        }
        return self._observation(), attempt.reward, terminated, False, info

    def render(self) -> np.ndarray | str | None:
        if self.render_mode == "rgb_array":
            return self._image
        if self.render_mode == "ansi":
            return self._text
        return None

    # -- expert interface ----------------------------------------------------------------------

    def current_task(self) -> QATask:
        return self._current().task

    def current_problem(self) -> Problem:
        return self._current()

    def expert_answer(self) -> str:
        problem = self._current()
        return f"{problem.solution}\n{boxed(problem.answer)}" if problem.solution else boxed(problem.answer)

    def wrong_answer(self, rng: np.random.Generator) -> str:
        problem = self._current()
        pool = list(problem.wrong_pool)
        for i in rng.permutation(len(pool)) if pool else []:
            reply = boxed(pool[int(i)])
            if is_wrong(problem, reply):  # never hand out a "wrong" answer that the checker accepts
                return reply
        return boxed("no answer")  # unreachable for well-formed problems; still a failing reply

    # -- helpers -------------------------------------------------------------------------------

    def _current(self) -> Problem:
        if self._problem is None:
            raise RuntimeError("call reset() first")
        return self._problem

    def _observation(self) -> dict[str, Any]:
        # A fresh image buffer per call: callers keep observations (rollout buffers, demonstrations).
        return {"text": self._text, "image": None if self._image is None else self._image.copy()}

    def _requested_index(self, options: Mapping[str, Any] | None) -> int | None:
        if not options:
            return None
        unknown = set(options) - {"index"}
        if unknown:
            raise ConfigError(f"unknown reset options {sorted(unknown)}; VisualQA accepts only 'index'")
        index = options["index"]
        if index is None:
            return None
        if self.benchmark is None:
            raise ConfigError("reset option 'index' needs a dataset; generated questions are chosen by seed")
        if (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < len(self.benchmark)
        ):
            raise ConfigError(f"index must be an integer in [0, {len(self.benchmark)}), got {index!r}")
        return int(index)

    def _generated_problem(self, rng: np.random.Generator) -> Problem:
        opts = self.options
        difficulty = opts.difficulty if opts.difficulty is not None else int(rng.integers(1, 6))
        kind = opts.kinds[int(rng.integers(len(opts.kinds)))]
        multiple_choice = {"mixed": bool(rng.integers(2)), "multiple_choice": True, "numeric": False}[
            opts.answer_format
        ]
        seed = int(rng.integers(2**63 - 1))
        spec = GenSpec(difficulty, opts.image_size, draw=self.image_mode, allow_text=multiple_choice)
        draft = generate(kind, seed, spec)
        question_id = f"{kind}-d{difficulty}-{'mc' if multiple_choice else 'num'}-{seed:016x}"
        # The choice order comes from the question's own seed, so its id fixes its full content.
        return finalize(draft, multiple_choice, np.random.default_rng([seed, 1]), question_id)

    def _benchmark_picture(self, index: int) -> np.ndarray:
        if index in self._pictures:
            self._pictures.move_to_end(index)
            return self._pictures[index]
        assert self.benchmark is not None
        image = self.benchmark[index].load_image()
        size = self.options.image_size
        picture = (
            letterbox(image, size) if image is not None else np.full((size, size, 3), 255, dtype=np.uint8)
        )
        self._pictures[index] = picture
        if len(self._pictures) > IMAGE_CACHE_SIZE:
            self._pictures.popitem(last=False)
        return picture
