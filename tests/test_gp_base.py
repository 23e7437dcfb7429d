"""gp-base: the base model with a rule-reading prior. Its data never holds the bar's rules (checked on
the data), its tokenizer gives every number one token, the shipped copy is verified and meets the
bar when measured here, and the preparation itself runs at a reduced size."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from deploy.models import gp_base, scratch
from deploy.models.gp_base import BAR_FILE, BAR_RULES, GPBaseConfig, demonstrations, gp_base_tokenizer
from services.verifier.face_rules import parse_face_rule, rule_text
from sftrl.models.prepare import PrepareOptions, prepare_model
from sftrl.models.store import weights_sha256

STATED = re.compile(r"J, Q and K each count as (\d+)|J counts as (\d+), Q as (\d+) and K as (\d+)")


def stated_rule(prompt: str) -> tuple[int, int, int]:
    match = STATED.search(prompt)
    assert match is not None, prompt
    if match.group(1):
        v = int(match.group(1))
        return v, v, v
    j, q, k = (int(g) for g in match.groups()[1:])
    return j, q, k


def test_held_out_rules_never_occur_in_the_base_data():
    demos = demonstrations(GPBaseConfig(episodes=3000, steps=1))
    held_out = {parse_face_rule(rule) for rule in BAR_RULES.values()}
    stated = [stated_rule(d.messages[0]["content"]) for d in demos]
    assert not held_out & set(stated)  # read from the prompts themselves, not from the options
    assert [parse_face_rule(d.meta["rule"]) for d in demos] == stated
    assert len(set(stated)) > 1000  # rule-diverse: most of the 2,193 allowed rules appear
    assert any(d.meta["revision"] for d in demos) and not all(d.meta["revision"] for d in demos)


def test_bar_suites_state_each_bar_rule_in_the_training_prompt_style():
    suites = gp_base.bar_suites(GPBaseConfig())
    assert {name: s["face_cards"] for name, s in suites.items()} == BAR_RULES
    assert {s["prompt_style"] for s in suites.values()} == {"compact"} and rule_text((4, 7, 2))


def test_every_number_of_the_game_is_one_token():
    demos = demonstrations(GPBaseConfig(episodes=300, steps=1))
    tokenizer = gp_base_tokenizer((m["content"] for d in demos for m in d.messages), 1024)
    for n in [*range(1, 14), 24]:  # every card value and the target
        for text in (f" {n}", f"{n}"):
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1, text
    answer = demos[0].messages[1]["content"]
    assert tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"]) == answer


def test_data_tokenizer_and_initial_weights_are_fixed_by_the_seed():
    import torch

    config = GPBaseConfig(episodes=200, steps=1)
    first, again = demonstrations(config), demonstrations(config)
    assert [d.messages for d in first] == [d.messages for d in again]
    assert [d.messages for d in first] != [
        d.messages for d in demonstrations(GPBaseConfig(episodes=200, seed=1))
    ]
    texts = [m["content"] for d in first for m in d.messages]
    tok_a, tok_b = gp_base_tokenizer(texts, 1024), gp_base_tokenizer(texts, 1024)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    a, b = (
        gp_base.initial_model(config, tok_a).state_dict(),
        gp_base.initial_model(config, tok_b).state_dict(),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shipped_copy_is_verified(tmp_path, monkeypatch):
    fake = tmp_path / "shipped"
    shutil.copytree(gp_base.SHIPPED, fake)
    monkeypatch.setattr(gp_base, "SHIPPED", fake)
    copied = prepare_model("gp-base", directory=tmp_path / "models")
    assert copied.built and copied.model.record.weights_sha256 == weights_sha256(gp_base.SHIPPED)
    assert json.loads((copied.model.path / BAR_FILE).read_text())["bar"]
    weights = fake / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the shipped weights
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="do not match"):
        prepare_model("gp-base", directory=tmp_path / "other")


def test_a_copy_of_an_earlier_shipped_base_is_outdated(tmp_path):
    copied = prepare_model("gp-base", directory=tmp_path / "models").model.record
    assert not scratch.outdated_copy("gp-base", copied)
    earlier = copied.model_copy(update={"weights_sha256": "0" * 64})  # what an older release shipped
    assert scratch.outdated_copy("gp-base", earlier)
    retrained = earlier.model_copy(update={"source": "made here: SFT from scratch"})
    assert not scratch.outdated_copy("gp-base", retrained)  # made here on purpose: kept
    assert not scratch.outdated_copy("tiny-llama", earlier)
    shorter = copied.model_copy(update={"max_position_embeddings": 1024})  # the same weights, less context
    assert scratch.outdated_copy("gp-base", shorter)


def test_each_seed_of_the_base_ships_in_its_own_folder(tmp_path, monkeypatch):
    root = tmp_path / "shipped"
    shutil.copytree(gp_base.SHIPPED, root / "gp-base")
    monkeypatch.setattr(gp_base, "SHIPPED", root / "gp-base")
    monkeypatch.setattr(scratch, "SHIPPED_ROOT", root)
    assert not scratch.ships(PrepareOptions(seed=1), gp_base.SHIPPED)  # not shipped: --retrain makes it
    shutil.copytree(root / "gp-base", root / "gp-base-seed1")  # stands in for the seed-1 base
    assert scratch.ships(PrepareOptions(seed=1), gp_base.SHIPPED)
    one = prepare_model("gp-base", PrepareOptions(seed=1), directory=tmp_path / "models-1").model.record
    assert one.options["seed"] == 1 and one.source.endswith("(shipped copy)")
    record = json.loads((root / "gp-base" / "sftrl_model.json").read_text())
    record["weights_sha256"] = "0" * 64  # seed 0's shipped base changes; seed 1's copy stays current
    (root / "gp-base" / "sftrl_model.json").write_text(json.dumps(record))
    assert not scratch.outdated_copy("gp-base", one)
    assert scratch.outdated_copy("gp-base", one.model_copy(update={"options": {"seed": 0, "steps": None}}))
    with pytest.raises(ValueError, match="another seed goes in its own models folder"):
        prepare_model("gp-base", directory=tmp_path / "models-1")  # seed 0 asked where seed 1 lives


def test_a_longer_context_changes_no_weight_and_no_output_within_the_old_one(tmp_path):
    """RoPE has no position weights: the base made with 2,048 positions is the one made with 1,024,
    and the shipped weights give the same logits under either (so growing it cost nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gp_base.SHIPPED)
    config = GPBaseConfig(steps=1)
    made = [scratch.initial_llama(config.shape(n), tokenizer, 0).state_dict() for n in (1024, 2048)]
    assert made[0].keys() == made[1].keys() and all(torch.equal(made[0][k], made[1][k]) for k in made[0])
    assert (
        gp_base.POSITIONS == 2048
        and json.loads((gp_base.SHIPPED / "config.json").read_text())["max_position_embeddings"]
        == gp_base.POSITIONS
    )
    ids = torch.randint(4, len(tokenizer), (1, 1000), generator=torch.Generator().manual_seed(0))
    logits = []
    for positions in (1024, 2048):
        model = AutoModelForCausalLM.from_pretrained(gp_base.SHIPPED, max_position_embeddings=positions)
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.equal(logits[0], logits[1])


@pytest.mark.slow
def test_shipped_base_meets_the_bar_measured_here(tmp_path):
    """Greedy, the paper's 5 attempts, 256 episodes on each bar rule: numbers under the stated rule in
    >= 95% of first answers on every rule; episode success >= 25% on each (the shipped base: ID 69.5%,
    rule-OOD 42.6%, held-out 76.6% and 71.5%; adherence 100% on each)."""
    prepared = prepare_model("gp-base", directory=tmp_path).model
    shipped = json.loads((prepared.path / BAR_FILE).read_text())
    measured = gp_base.measure_bar(prepared.path, GPBaseConfig(**shipped["config"]))
    assert measured["episodes_per_rule"] == 256
    m = measured["metrics"]
    for suite in BAR_RULES:
        assert m[f"adherence/{suite}"] >= 0.95, (suite, m[f"adherence/{suite}"])
        assert m[f"success/{suite}"] >= 0.25, (suite, m[f"success/{suite}"])
        # The shipped figures are what this measurement gives (vLLM greedy, same episodes).
        assert m[f"success/{suite}"] == pytest.approx(shipped["bar"][f"success/{suite}"], abs=0.03)


@pytest.mark.slow
def test_preparation_at_reduced_size(tmp_path):
    """The whole command at 40 steps: data, tokenizer, SFT through the learner, the bar measured with
    vLLM. Stated lower bar at this size: first answers are JSON with a well-formed formula."""
    outcome = prepare_model("gp-base", PrepareOptions(steps=40), directory=tmp_path)
    record = outcome.model.record
    assert outcome.built and record.options == {"seed": 0, "steps": 40}
    assert 3_000_000 < record.parameters < 4_000_000 and record.vocab_size <= 1024
    summary = json.loads((outcome.model.path / BAR_FILE).read_text())
    assert summary["episodes_per_rule"] == 64 and summary["final_loss"] < summary["loss_every_25"][0]
    for suite in BAR_RULES:
        assert summary["bar"][f"field/{suite}/formula_wellformed"] >= 0.8
        assert 0.0 <= summary["bar"][f"adherence/{suite}"] <= 1.0
        low, high = summary["intervals_95"][f"success/{suite}"]  # every rate with its 95% interval
        assert low <= summary["bar"][f"success/{suite}"] <= high and summary["bar"][f"episodes/{suite}"] == 64
