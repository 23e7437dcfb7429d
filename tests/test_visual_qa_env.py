"""sftrl/VisualQA-v0: generated questions, benchmark files, episodes and the expert interface."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

import services.envs  # noqa: F401  (registers the environments)
from services.envs.visual_qa import GENERATOR_KINDS, VisualQAEnv, load_benchmark, write_benchmark
from services.envs.visual_qa.benchmark import encode_png_base64, png_bytes
from services.envs.visual_qa.prompts import TEMPLATES
from services.verifier.visual_qa import LETTERS, parse_number, verify_visual_qa
from sftrl.config import ConfigError

DATA = Path(__file__).parent / "data"
SAMPLE_JSONL = DATA / "visual_qa_sample.jsonl"
SAMPLE_PARQUET = DATA / "visual_qa_sample.parquet"
FORMATS = ("numeric", "multiple_choice", "mixed")


def _run(env: VisualQAEnv, reply: str) -> tuple[float, bool, bool, dict[str, Any]]:
    _, reward, terminated, truncated, info = env.step(reply)
    return reward, terminated, truncated, info


# -- generated questions ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["image", "text"])
def test_same_seed_same_question(mode: str) -> None:
    a, b = VisualQAEnv(mode=mode), VisualQAEnv(mode=mode)
    for seed in range(20):
        obs_a, info_a = a.reset(seed=seed)
        obs_b, info_b = b.reset(seed=seed)
        assert obs_a["text"] == obs_b["text"] and info_a == info_b
        if mode == "image":
            assert np.array_equal(obs_a["image"], obs_b["image"])
        else:
            assert obs_a["image"] is None
    ids = {a.reset(seed=s)[1]["question_id"] for s in range(50)}
    assert len(ids) == 50


def test_image_and_text_mode_ask_the_same_question() -> None:
    image_env, text_env = VisualQAEnv(mode="image"), VisualQAEnv(mode="text")
    for seed in range(30):
        _, info_image = image_env.reset(seed=seed)
        obs_text, info_text = text_env.reset(seed=seed)
        assert info_image == info_text
        problem = text_env.current_problem()
        assert problem.scene and problem.scene in obs_text["text"]  # the picture, in words


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
@pytest.mark.parametrize("answer_format", FORMATS)
def test_expert_is_right_and_wrong_answer_is_wrong(kind: str, answer_format: str) -> None:
    env = VisualQAEnv(mode="text", kinds=[kind], answer_format=answer_format)
    rng = np.random.default_rng(0)
    for seed in range(150):
        obs, info = env.reset(seed=seed)
        assert info["kind"] == kind and 1 <= info["difficulty"] <= 5
        expert = env.expert_answer()
        assert expert.rstrip().endswith(f"\\boxed{{{info['answer']}}}")
        reward, terminated, truncated, step_info = _run(env, expert)
        assert (reward, terminated, truncated) == (1.0, True, False), (obs["text"], expert, step_info)
        assert step_info["success"] and step_info["errors"] == []

        env.reset(seed=seed)
        wrong = env.wrong_answer(rng)
        reward, terminated, truncated, step_info = _run(env, wrong)
        assert (reward, terminated, truncated) == (0.0, True, False), (obs["text"], wrong)
        assert step_info["errors"] == ["wrong_answer", "attempts_exhausted"]  # one attempt: the last


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
def test_image_mode_expert_and_wrong(kind: str) -> None:
    env = VisualQAEnv(kinds=[kind], image_size=256)
    rng = np.random.default_rng(1)
    for seed in range(25):
        obs, _ = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        assert obs["image"].shape == (256, 256, 3) and obs["image"].dtype == np.uint8
        assert obs["image"].std() > 5  # something is drawn
        assert _run(env, env.expert_answer())[0] == 1.0
        env.reset(seed=seed)
        assert _run(env, env.wrong_answer(rng))[0] == 0.0


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
def test_multiple_choice_options_are_distinct_and_hold_the_answer_once(kind: str) -> None:
    env = VisualQAEnv(mode="text", kinds=[kind], answer_format="multiple_choice")
    positions = set()
    for seed in range(100):
        obs, info = env.reset(seed=seed)
        choices = info["choices"]
        assert 3 <= len(choices) <= 4 and info["answer_type"] == "choice"
        assert len({c.strip().lower() for c in choices}) == len(choices)
        values = [parse_number(c) for c in choices]
        if all(values):  # numeric options must differ in value too, not just in spelling
            assert len({v.value for v in values if v}) == len(choices)
        answer_index = LETTERS.index(info["answer"])
        positions.add(answer_index)
        for i, choice in enumerate(choices):
            assert f"({LETTERS[i]}) {choice}" in obs["text"]
            correct = verify_visual_qa(env.current_task(), f"\\boxed{{{LETTERS[i]}}}").success
            assert correct == (i == answer_index)
    assert positions == {0, 1, 2, 3} or kind == "bar_chart" and len(positions) >= 3


def test_numeric_format_never_offers_choices() -> None:
    env = VisualQAEnv(mode="text", answer_format="numeric")
    for seed in range(100):
        obs, info = env.reset(seed=seed)
        assert info["choices"] is None and info["answer_type"] == "number"
        assert parse_number(info["answer"]) is not None
        assert "(A)" not in obs["text"]


def test_mixed_format_serves_both() -> None:
    env = VisualQAEnv(mode="text")
    types = {env.reset(seed=s)[1]["answer_type"] for s in range(40)}
    assert types == {"choice", "number"}


@pytest.mark.parametrize("difficulty", [1, 2, 3, 4, 5])
def test_difficulty_knob(difficulty: int) -> None:
    env = VisualQAEnv(mode="text", difficulty=difficulty)
    for seed in range(20):
        assert env.reset(seed=seed)[1]["difficulty"] == difficulty


def test_difficulty_scales_the_counting_scene() -> None:
    def shapes(difficulty: int) -> float:
        env = VisualQAEnv(mode="text", kinds=["counting"], difficulty=difficulty)
        counts = []
        for seed in range(30):
            env.reset(seed=seed)
            counts.append(env.current_problem().scene.count(","))
        return float(np.mean(counts))

    assert shapes(1) < shapes(3) < shapes(5)


def test_answers_are_computed_from_the_drawn_numbers() -> None:
    env = VisualQAEnv(mode="text", kinds=["bar_chart"], answer_format="numeric", difficulty=3)
    for seed in range(40):
        _, info = env.reset(seed=seed)
        scene = env.current_problem().scene
        pairs = (pair.rsplit(" ", 1) for pair in scene.split(": ", 1)[1].rstrip(".").split(", "))
        values = {name: int(v) for name, v in pairs}
        question = env.current_problem().question
        named = [n for n in values if f" {n} " in question or f" {n}?" in question]
        if "total of all" in question:
            assert int(info["answer"]) == sum(values.values())
        elif "more" in question:
            assert int(info["answer"]) == abs(values[named[0]] - values[named[1]])
        elif "together" in question:
            assert int(info["answer"]) == values[named[0]] + values[named[1]]
        else:
            assert int(info["answer"]) == values[named[0]]


# -- episodes -----------------------------------------------------------------------------------


def test_revision_attempts_and_feedback() -> None:
    env = VisualQAEnv(mode="text", verify_iter=3, answer_format="numeric", kinds=["counting"])
    env.reset(seed=4)
    rng = np.random.default_rng(0)
    wrong = env.wrong_answer(rng)
    obs, reward, terminated, truncated, info = env.step(wrong)
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["feedback"] == obs["text"]
    assert obs["text"].startswith("Your answer ") and obs["text"].endswith("is not correct; try again.")
    assert info["extracted_answer"] is not None and info["extracted_answer"] in obs["text"]
    assert info["attempts_left"] == 2

    obs, reward, terminated, truncated, info = env.step("I don't know")
    assert info["errors"] == ["no_answer_found"] and "\\boxed{}" in obs["text"] and not truncated

    obs, reward, terminated, truncated, info = env.step(env.expert_answer())
    assert (reward, terminated, truncated) == (1.0, True, False) and info["success"]
    with pytest.raises(RuntimeError):
        env.step(env.expert_answer())


def test_attempts_run_out() -> None:
    env = VisualQAEnv(mode="text", verify_iter=2)
    env.reset(seed=0)
    assert env.step("\\boxed{")[2:4] == (False, False)
    _, reward, terminated, truncated, info = env.step("\\boxed{")
    assert (reward, terminated, truncated) == (0.0, True, False)
    assert (
        info["errors"] == ["malformed_answer", "attempts_exhausted"] and "try again" not in info["feedback"]
    )


def test_step_before_reset_fails() -> None:
    with pytest.raises(RuntimeError):
        VisualQAEnv(mode="text").step("\\boxed{1}")


def test_hostile_replies_end_cleanly() -> None:
    env = VisualQAEnv(mode="text")
    for reply in ["", "\x00" * 100, "{" * 100_000, "\\boxed{" * 10_000, "9" * 100_000]:
        env.reset(seed=1)
        _, reward, terminated, truncated, info = env.step(reply)
        assert reward == 0.0 and terminated and not truncated
        assert len(info["errors"]) == 2 and info["errors"][-1] == "attempts_exhausted"


def test_render_modes() -> None:
    env = VisualQAEnv(render_mode="rgb_array", image_size=128)
    obs, _ = env.reset(seed=0)
    assert np.array_equal(env.render(), obs["image"])
    text_env = VisualQAEnv(render_mode="ansi", mode="text")
    obs, _ = text_env.reset(seed=0)
    assert text_env.render() == obs["text"]
    obs, *_ = text_env.step("\\boxed{-1}")
    assert text_env.render() == obs["text"]


# -- prompts ------------------------------------------------------------------------------------


def test_prompt_styles_share_the_answer_rule() -> None:
    assert len(TEMPLATES["diverse"]) >= 4
    for template in [TEMPLATES["default"], TEMPLATES["compact"], *TEMPLATES["diverse"]]:
        assert "\\boxed{12}" in template.number and any(w in template.number for w in ("number", "numeric"))
        assert "\\boxed{B}" in template.choice and "letter" in template.choice
        assert "\\boxed{" in template.text

    env = VisualQAEnv(mode="text", prompt_style="diverse", answer_format="multiple_choice")
    openings = {env.reset(seed=s)[0]["text"].split("\n")[0] for s in range(60)}
    assert len(openings) >= 4
    assert env.reset(seed=3)[0]["text"] == env.reset(seed=3)[0]["text"]

    compact = VisualQAEnv(mode="text", prompt_style="compact")
    default = VisualQAEnv(mode="text")
    assert len(compact.reset(seed=2)[0]["text"]) < len(default.reset(seed=2)[0]["text"])
    assert compact.reset(seed=2)[1] == default.reset(seed=2)[1]  # style changes wording only


# -- options and registration -------------------------------------------------------------------


def test_gymnasium_make() -> None:
    env = gym.make("sftrl/VisualQA-v0", mode="text", kinds=["geometry"], verify_iter=2)
    obs, info = env.reset(seed=0)
    assert info["kind"] == "geometry" and obs["image"] is None
    _, reward, terminated, _, _ = env.step(env.unwrapped.expert_answer())
    assert reward == 1.0 and terminated
    image_env = gym.make("sftrl/VisualQA-v0", image_size=96)
    obs, _ = image_env.reset(seed=0)
    assert obs["image"].shape == (96, 96, 3)
    assert image_env.observation_space.contains(obs)


@pytest.mark.parametrize(
    "options",
    [{"mode": "image", "image_size": 96}, {"mode": "text"}, {"dataset": str(SAMPLE_JSONL)}],
    ids=["image", "text", "dataset"],
)
def test_gymnasium_env_checker(options: dict[str, Any]) -> None:
    """Gymnasium's own checks (spaces, seeding, fresh buffers), with the default single attempt."""
    import warnings

    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        check_env(VisualQAEnv(**options), skip_render_check=True)


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "video"},
        {"kinds": []},
        {"kinds": ["counting", "counting"]},
        {"kinds": ["sudoku"]},
        {"answer_format": "essay"},
        {"verify_iter": 0},
        {"difficulty": 6},
        {"image_size": 8},
        {"colour": "red"},
        {"prompt_style": "fancy"},
        {"dataset": "/nonexistent/bench.jsonl"},
    ],
)
def test_bad_options_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        VisualQAEnv(**options)


def test_bad_reset_options() -> None:
    env = VisualQAEnv(mode="text")
    with pytest.raises(ConfigError, match="index"):
        env.reset(options={"index": 0})  # no dataset
    with pytest.raises(ConfigError, match="unknown reset options"):
        env.reset(options={"level": 2})
    bench = VisualQAEnv(mode="text", dataset=str(SAMPLE_JSONL))
    for bad in (-1, 10_000, "0", True):
        with pytest.raises(ConfigError):
            bench.reset(options={"index": bad})


# -- benchmark files ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SAMPLE_JSONL, SAMPLE_PARQUET], ids=["jsonl", "parquet"])
@pytest.mark.parametrize("mode", ["image", "text"])
def test_sample_benchmark_episodes(path: Path, mode: str) -> None:
    items = load_benchmark(path)
    env = VisualQAEnv(mode=mode, dataset=str(path), image_size=160)
    rng = np.random.default_rng(0)
    for index, item in enumerate(items):
        obs, info = env.reset(options={"index": index})
        assert info["question_id"] == item.question_id
        assert item.question.splitlines()[0] in obs["text"]
        assert env.observation_space.contains(obs)
        if mode == "text":
            assert obs["text"].startswith(item.question.splitlines()[0])  # no "described below" intro
        if mode == "image":
            assert obs["image"].shape == (160, 160, 3)
            assert (obs["image"].std() > 1) == (item.image_source is not None)
        assert _run(env, env.expert_answer())[0] == 1.0, (item, env.expert_answer())
        env.reset(options={"index": index})
        wrong = env.wrong_answer(rng)
        assert _run(env, wrong)[0] == 0.0, (item, wrong)
    seen = {env.reset(seed=s)[1]["question_id"] for s in range(60)}
    assert seen == {item.question_id for item in items}


def test_sample_jsonl_fields() -> None:
    items = {item.question_id: item for item in load_benchmark(SAMPLE_JSONL)}
    assert set(items) == {
        "vqa-bar",
        "vqa-triangle",
        "mathvista-7",
        "mathvista-9",
        "mathverse-3",
        "vqa-yesno",
        "vqa-text-only",
    }
    assert items["vqa-triangle"].answer_type == "choice" and items["vqa-triangle"].choices
    assert items["mathvista-7"].answer_type == "number" and items["mathvista-7"].question.startswith(
        "How many"
    )
    assert items["mathvista-9"].tolerance == pytest.approx(0.05)  # precision 1
    assert items["mathverse-3"].answer_type == "choice" and items["mathverse-3"].choices is None
    assert items["vqa-yesno"].answer_type == "text"
    assert items["vqa-text-only"].image_source is None
    assert items["vqa-bar"].difficulty == 2 and items["vqa-bar"].kind == "bar_chart"
    # the same picture, once as a relative path and once embedded, decodes identically
    path_image = np.asarray(items["vqa-triangle"].load_image())
    assert np.array_equal(
        path_image, np.asarray(Image.open(DATA / "visual_qa_images/sample_triangle.png").convert("RGB"))
    )
    assert np.array_equal(path_image, np.asarray(items["mathverse-3"].load_image()))


def test_sample_parquet_fields() -> None:
    items = {item.question_id: item for item in load_benchmark(SAMPLE_PARQUET)}
    assert isinstance(items["pq-rect"].image_source, bytes)  # {"bytes": ..., "path": ...} struct
    assert isinstance(items["pq-count"].image_source, Path)  # relative path string
    assert items["pq-shop"].answer_type == "choice"
    assert items["pq-frac"].tolerance == pytest.approx(0.005)
    counting = load_benchmark(SAMPLE_JSONL)[2]
    assert np.array_equal(np.asarray(items["pq-count"].load_image()), np.asarray(counting.load_image()))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("encoding", ["base64", "path", "bytes", "struct"])
def test_round_trip_of_generated_questions(tmp_path: Path, suffix: str, encoding: str) -> None:
    if suffix == ".jsonl" and encoding in ("bytes", "struct"):
        encoding = "base64" if encoding == "bytes" else "path"  # JSON has no bytes
    env = VisualQAEnv(image_size=128)
    rows, pictures, answers = [], [], []
    for seed in range(8):
        env.reset(seed=seed)
        problem = env.current_problem()
        image = problem.image
        pictures.append(np.asarray(image))
        if encoding == "base64":
            picture: Any = encode_png_base64(image)
        elif encoding == "path":
            image.save(tmp_path / f"q{seed}.png")
            picture = f"q{seed}.png"
        elif encoding == "bytes":
            picture = png_bytes(image)
        else:
            picture = {"bytes": png_bytes(image), "path": f"q{seed}.png"}
        rows.append(
            {
                "id": problem.question_id,
                "question": problem.question,
                "image": picture,
                "choices": list(problem.choices) if problem.choices else None,
                "answer": problem.answer,
            }
        )
        answers.append(env.expert_answer())
    path = write_benchmark(tmp_path / f"bench{suffix}", rows)
    items = load_benchmark(path)
    assert [item.question_id for item in items] == [row["id"] for row in rows]
    for item, picture, answer in zip(items, pictures, answers, strict=True):
        assert np.array_equal(np.asarray(item.load_image()), picture)
        assert verify_visual_qa(item.task(), answer).success


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb shape)."""
    data = bytearray(png_bytes(Image.new("RGB", (4, 4), "white")))
    ihdr = bytearray(data[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8"
    )
    return path


GOOD_ROW = {"question": "How many?", "answer": "3"}
TINY_PNG = encode_png_base64(Image.new("RGB", (8, 8), "red"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD_ROW, "{not json"], "row 1 (line 2): not valid JSON"),
        ([GOOD_ROW, {"answer": "3"}], "row 1 (line 2): missing field 'question'"),
        ([{"question": "q"}], "row 0 (line 1): missing field 'answer'"),
        ([{"question": "q", "answer": ""}], "answer is empty"),
        ([{"question": "q", "answer": [1, 2]}], "answer must be text or a number"),
        ([["a", "list"]], "a row must be an object"),
        ([{**GOOD_ROW, "image": "!!!not base64!!!"}], "neither a file path nor valid base64"),
        ([{**GOOD_ROW, "image": "missing/picture.png"}], "does not exist"),
        (
            [{**GOOD_ROW, "image": base64.b64encode(b"not an image at all").decode()}],
            "not a readable PNG/JPEG",
        ),
        ([{**GOOD_ROW, "image": {"path": None}}], "neither 'bytes' nor 'path'"),
        ([{**GOOD_ROW, "image": 12}], "image must be base64 text"),
        ([{**GOOD_ROW, "image": base64.b64encode(_png_claiming(20_000, 20_000)).decode()}], "exceeds"),
        ([{**GOOD_ROW, "image": TINY_PNG[: len(TINY_PNG) // 2 // 4 * 4]}], "image"),
        (
            [{"question": "q", "answer": "45°", "choices": ["30°", "60°"]}],
            "neither a choice letter nor one of the choices",
        ),
        ([{"question": "q", "answer": "A", "choices": ["x", "x"]}], "not distinct"),
        ([{"question": "q", "answer": "A", "choices": 5}], "choices must be a list"),
        ([{"question": "q", "answer": "three", "answer_type": "integer"}], "is not a number"),
        ([{"question": "q", "answer": "3", "answer_type": "matrix"}], "unknown answer_type"),
        ([{"question": "q", "answer": "3", "tolerance": -1}], "tolerance"),
        ([{"question": "q", "answer": "3", "precision": 99}], "precision"),
        ([{"id": 1, **GOOD_ROW}, {"id": 1, **GOOD_ROW}], "id '1' repeats"),
        ([], "no rows"),
    ],
)
def test_malformed_jsonl_names_file_and_row(tmp_path: Path, rows: list[Any], message: str) -> None:
    path = _write_jsonl(tmp_path / "bench.jsonl", rows)
    with pytest.raises(ConfigError) as caught:
        load_benchmark(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_malformed_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError, match="broken.parquet"):
        load_benchmark(broken)
    other = tmp_path / "bench.csv"
    other.write_text("question,answer\n")
    with pytest.raises(ConfigError, match="unsupported benchmark format"):
        load_benchmark(other)
    with pytest.raises(ConfigError, match="does not exist"):
        load_benchmark(tmp_path / "missing.jsonl")
    rows = [
        {"question": "q", "answer": "1", "choices": None},
        {"question": "q2", "answer": None, "choices": None},
    ]
    pq_path = write_benchmark(tmp_path / "missing_answer.parquet", rows)
    with pytest.raises(ConfigError, match=r"missing_answer.parquet row 1: missing field 'answer'"):
        load_benchmark(pq_path)


def test_mathvista_json_mapping(tmp_path: Path) -> None:
    """MathVista's testmini.json is a {pid: row} mapping with a decoded image path."""
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "1.png")
    data = {
        "1": {
            "question": "What colour fills the picture?",
            "image": "1.png",
            "choices": ["red", "blue"],
            "answer": "blue",
            "question_type": "multi_choice",
            "answer_type": "text",
            "precision": None,
        },
        "2": {
            "question": "What is 2.5 + 1?",
            "image": None,
            "choices": None,
            "answer": "3.5",
            "question_type": "free_form",
            "answer_type": "float",
            "precision": 1.0,
        },
    }
    path = tmp_path / "testmini.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    first, second = load_benchmark(path)
    assert (first.question_id, first.answer_type, second.question_id, second.answer_type) == (
        "1",
        "choice",
        "2",
        "number",
    )
    env = VisualQAEnv(dataset=str(path), image_size=64)
    obs, info = env.reset(options={"index": 0})
    assert info["answer"] == "B" and info["choices"] == ["red", "blue"]
    assert tuple(obs["image"][32, 32]) == (0, 0, 255)  # letterboxed, not stretched or cropped
    assert tuple(obs["image"][2, 32]) == (255, 255, 255)
    assert env.step("The picture is blue, so \\boxed{blue}")[1] == 1.0
    env.reset(options={"index": 1})
    assert env.step("\\boxed{3.54}")[1] == 1.0
