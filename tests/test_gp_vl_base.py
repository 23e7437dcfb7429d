"""gp-vl-base, the card-reading VLM made here: its data (both suit colours, the bar's rules never in it),
its language side (gp-base's weights, the image tokens added) and its rows (loss on answers only)."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file

from deploy.models import gp_base
from deploy.models.gp_base import BAR_RULES
from deploy.models.gp_vl_base import (
    SUIT_SETS,
    GPVLBaseConfig,
    check_held_out,
    demonstrations,
    initial_model,
    recognition_rows,
    vl_processor,
    vl_tokenizer,
)
from services.learner.sft_data import tokenize_sft
from services.verifier.face_rules import parse_face_rule

SMALL = GPVLBaseConfig(episodes=90, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64)


def _red_pixels(image: np.ndarray) -> int:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(((r > 150) & (g < 80) & (b < 80)).sum())


def test_hands_of_both_colours_and_never_a_bar_rule() -> None:
    demos = demonstrations(SMALL)
    assert len(demos) == 90 and all(d.images[0] is not None for d in demos)
    check_held_out(demos)  # raises if a bar rule occurs
    held_out = {parse_face_rule(r) for r in BAR_RULES.values()}
    assert not held_out & {parse_face_rule(d.meta["rule"]) for d in demos}
    assert all("see image" in d.messages[0]["content"] for d in demos)  # the picture, not the names
    red = [_red_pixels(d.images[0]) for d in demos]
    black, reds, mixed = (red[i * 30 : (i + 1) * 30] for i in range(len(SUIT_SETS)))
    assert max(black) == 0 and min(reds) > 0 and sum(v > 0 for v in mixed) > 15
    assert demos[0].images[0].shape == (SMALL.image_size, SMALL.image_size, 3)


def test_the_language_side_is_gp_base_and_rows_train_on_answers_only(tmp_path) -> None:
    tokenizer = vl_tokenizer(gp_base.SHIPPED)
    model = initial_model(SMALL, tokenizer, gp_base.SHIPPED)
    text = load_file(gp_base.SHIPPED / "model.safetensors")
    state = model.state_dict()
    old = text["model.embed_tokens.weight"].shape[0]
    assert len(tokenizer) > old and state["model.text_model.embed_tokens.weight"].shape[0] == len(tokenizer)
    for key, value in text.items():
        mine = state[
            "lm_head.weight" if key == "lm_head.weight" else "model.text_model." + key[len("model.") :]
        ]
        assert torch.equal(mine[: value.shape[0]], value), key  # gp-base's own rows, unchanged
    assert torch.allclose(
        state["lm_head.weight"][old:], text["lm_head.weight"].mean(0).expand(len(tokenizer) - old, -1)
    )
    processor = vl_processor(SMALL, tokenizer)
    demos = demonstrations(SMALL.model_copy(update={"episodes": 3}))
    rows = tokenize_sft(recognition_rows(demos, tmp_path), processor, SMALL.max_len)
    assert len(rows) == 3 and rows[0].pixel_values is not None
    ids, labels = rows[0].input_ids, rows[0].labels
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    assert int((ids == image_token).sum()) == SMALL.image_seq_len  # 16 tokens for the picture
    answer = tokenizer.decode(ids[labels != -100])
    assert json.loads(answer[: answer.rindex("}") + 1]) == {
        "cards": json.loads(demos[0].messages[-1]["content"])["cards"]
    }
    with torch.no_grad():
        out = model(input_ids=ids[None], pixel_values=rows[0].pixel_values[None], labels=labels[None])
    assert torch.isfinite(out.loss)
