"""virl-base: the base model that follows route instructions. Its data never holds an evaluation city
or a bar route (checked on the data), it states both action spaces and holds revision turns, it is
fixed by its seed, and the preparation itself runs at a reduced size."""

from __future__ import annotations

import re

import pytest

from deploy.models import virl_base
from deploy.models.virl_base import (
    BAR_SUITES,
    VIRLBaseConfig,
    copy_conversations,
    cut_conversations,
    demonstrations,
)
from services.envs.virl.headings import COMPASS, RELATIVE

CITY = re.compile(r"^Walk through (.+?) from ")
ACTIONS = re.compile(r'"action": "turn_direction\(([a-z ]+)\)"')


def test_evaluation_cities_and_bar_routes_never_occur_in_the_base_data():
    demos = demonstrations(VIRLBaseConfig(episodes=600, steps=1))
    named = {CITY.match(d.messages[0]["content"]).group(1) for d in demos}  # read from the prompts
    assert named == set(virl_base.TRAINING_TOWNS)
    assert not {n.lower().replace(" ", "_") for n in named} & set(virl_base.HELD_OUT_CITIES)
    assert {options["city"] for options in BAR_SUITES.values()} <= set(virl_base.HELD_OUT_CITIES)
    virl_base.check_held_out(demos, 64)  # the bar's routes themselves, compared with the data's
    leaked = demos[:3] + [demos[3]]
    leaked[-1].meta = {**leaked[-1].meta, "city": "New York"}
    with pytest.raises(RuntimeError, match="held-out cities"):
        virl_base.check_held_out(leaked, 64)


def test_route_already_in_the_data_is_refused(monkeypatch):
    demos = demonstrations(VIRLBaseConfig(episodes=4, steps=1))
    monkeypatch.setattr(virl_base, "bar_routes", lambda episodes: {tuple(demos[2].meta["route"])})
    with pytest.raises(RuntimeError, match="1 of the bar's routes"):
        virl_base.check_held_out(demos, 64)


def test_both_action_spaces_are_stated_and_answered_in_their_own_words():
    demos = demonstrations(VIRLBaseConfig(episodes=200, steps=1))
    spaces = [d.meta["actions"] for d in demos]
    assert 0.35 < spaces.count("relative") / len(spaces) < 0.65
    for demo in demos:
        choices = COMPASS if demo.meta["actions"] == "absolute" else RELATIVE
        assert ", ".join(choices) in demo.messages[0]["content"]  # the space is stated in the prompt
        expert = [m["content"] for m, nxt in zip(demo.messages[1::2], demo.messages[2::2] + [None])
                  if nxt is None or nxt["content"].startswith("Correct")]  # fmt: skip
        assert all(x in choices for answer in expert for x in ACTIONS.findall(answer))


def test_revision_turns_at_most_one_wrong_attempt_per_point():
    demos = demonstrations(VIRLBaseConfig(episodes=200, steps=1, wrong_rate=0.2))
    wrong = [m["content"] for d in demos for m in d.messages[2::2] if "wrong" in m["content"]]
    points = sum(1 for d in demos for m in d.messages[2::2] if m["content"].startswith("Correct")) + len(
        demos
    )
    assert 0.12 < len(wrong) / points < 0.28  # the drawn share of points
    for demo in demos:
        feedback = [m["content"] for m in demo.messages[2::2]]
        assert not any(a.startswith("Your") and b.startswith("Your") for a, b in zip(feedback, feedback[1:]))
        assert "No attempts are left" not in demo.messages[-2]["content"]


def test_data_tokenizer_and_initial_weights_are_fixed_by_the_seed():
    import torch

    from deploy.models.scratch import LlamaShape, initial_llama, word_tokenizer

    config = VIRLBaseConfig(episodes=60, steps=1)
    first, again = demonstrations(config), demonstrations(config)
    assert [d.messages for d in first] == [d.messages for d in again]
    assert [d.messages for d in first] != [
        d.messages for d in demonstrations(config.model_copy(update={"seed": 1}))
    ]
    texts = [m["content"] for d in first for m in d.messages]
    tok_a, tok_b = word_tokenizer(texts, 1024, 4096), word_tokenizer(texts, 1024, 4096)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    answer = first[0].messages[1]["content"]
    assert tok_a.decode(tok_a(answer, add_special_tokens=False)["input_ids"]) == answer
    shape = LlamaShape(64, 2, 2, 1, 128, 4096)
    a, b = initial_llama(shape, tok_a, 0).state_dict(), initial_llama(shape, tok_b, 0).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cut_rows_end_with_one_of_their_first_answers_and_copy_rows_repeat_the_towns_sentences():
    demos = demonstrations(VIRLBaseConfig(episodes=40, steps=1))
    cut = cut_conversations(demos, 120, 3, seed=0)
    answers = [sum(m["role"] == "assistant" for m in c.messages) for c in cut]
    assert set(answers) == {1, 2, 3} and all(c.messages[-1]["role"] == "assistant" for c in cut)
    assert [c.messages for c in cut[:40]] == [d.messages[: len(c.messages)] for c, d in zip(cut, demos)]
    texts = {
        line for d in demos for m in d.messages if m["role"] == "user" for line in m["content"].split("\n")
    }
    for row in copy_conversations(demos, 50, seed=0):
        prompt, answer = row.messages[0]["content"], row.messages[1]["content"]
        assert prompt == "Repeat: " + answer and any(answer.split(". ")[0] in t for t in texts)


def test_reduced_recipes_keep_the_curriculum_in_proportion():
    full = VIRLBaseConfig()
    small = full.scaled(366)
    assert small.total_steps == 366 and (small.copy_steps, small.whole_steps) == (40, 100)
    assert full.scaled(full.total_steps) == full


def test_fresh_names_rename_a_towns_places_one_to_one_and_keep_the_episode_consistent():
    from services.envs.virl.names import MAX_NAME_CHARS

    plain = demonstrations(VIRLBaseConfig(episodes=48, steps=1))
    fresh = demonstrations(VIRLBaseConfig(episodes=48, steps=1, fresh_names=True))
    virl_base.check_held_out(fresh, 64)
    renamed = 0
    for before, after in zip(plain, fresh):
        start, destination = before.meta["route"][:2]
        new_start, new_destination = after.meta["route"][:2]
        assert len(new_start) <= MAX_NAME_CHARS and (new_start == new_destination) == (start == destination)
        # the same words around the names: only names change, and each old name maps to one new name
        skeleton = re.compile(r"[A-Z][\w']*(?: [A-Z][\w']*)*")
        assert [skeleton.sub("N", m["content"]) for m in before.messages] == [
            skeleton.sub("N", m["content"]) for m in after.messages
        ]
        pairs = {(a, b) for x, y in zip(before.messages, after.messages)
                 for a, b in zip(skeleton.findall(x["content"]), skeleton.findall(y["content"]))}  # fmt: skip
        assert len({a for a, _ in pairs}) == len(pairs) == len({b for _, b in pairs})  # one to one
        renamed += new_start != start
        joined = "\n".join(m["content"] for m in after.messages)
        assert new_start in joined and new_destination in joined
    assert renamed >= 40  # a town's names no longer predict an episode's
