"""Telling a vision-language model from a text one, and loading what tokenises its inputs.

A VLM is recognised by its processor (a tokenizer and an image processor together): the processor
places and expands the image tokens, so every role that tokenises a VLM's input (rollout's chat
formatter, the SFT data, the learner's image batches) must use it rather than the bare tokenizer.
"""

from __future__ import annotations

from typing import Any


def is_processor(obj: Any) -> bool:
    """Whether ``obj`` is a multimodal processor (an image processor and a tokenizer)."""
    return hasattr(obj, "image_processor") and hasattr(obj, "tokenizer")


def load_processor(path: str) -> Any | None:
    """The multimodal processor saved at ``path``, or None for a text model."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError):
        return None
    return processor if is_processor(processor) else None


def load_tokenizer_or_processor(model: str) -> Any:
    """A VLM's processor, else the model's tokenizer (``model``: a name or a path)."""
    from transformers import AutoTokenizer

    from sftrl.models.store import resolve_model

    path = resolve_model(model)
    processor = load_processor(path)
    return processor if processor is not None else AutoTokenizer.from_pretrained(path)
