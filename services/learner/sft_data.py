"""SFT data: demonstration files (LLaVA JSON, chat JSONL) read into conversations, then tokenised with
the model's own chat template into rows whose labels cover exactly the assistant tokens.

Both formats are what ``sftrl data sft`` writes (``services/envs/demonstrations.py``). Messages are
kept in the HF convention (``content`` a string, or a list of ``{"type": "text" | "image"}`` parts);
image paths are resolved relative to the data file. The assistant mask comes from the template's
``{% generation %}`` blocks (``return_assistant_tokens_mask=True``), so the mask is the template's
own idea of what the assistant said (its text and the end-of-turn token), never a re-derivation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sftrl.models.processor import is_processor

IGNORE_INDEX = -100
IMAGE_MARKER = "<image>"
log = logging.getLogger(__name__)


@dataclass
class SFTConversation:
    """One demonstration: HF-style messages and the image files its image parts refer to, in order."""

    id: str
    messages: list[dict[str, Any]]
    images: list[Path] = field(default_factory=list)

    @property
    def has_images(self) -> bool:
        return bool(self.images)


@dataclass
class SFTExample:
    """One tokenised row: ``labels`` is ``input_ids`` with every non-assistant token set to -100."""

    input_ids: Any  # torch.LongTensor [T]
    labels: Any  # torch.LongTensor [T]
    pixel_values: Any | None = None  # [num_images, 3, H, W] (VLMs)
    pixel_attention_mask: Any | None = None  # [num_images, H, W] (VLMs that pad images)
    id: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_target_tokens(self) -> int:
        """Tokens that carry loss (labels shifted by one, as the causal loss sees them)."""
        return int((self.labels[1:] != IGNORE_INDEX).sum())


# -- reading ---------------------------------------------------------------------------------------


def _fail(path: Path, where: str, why: str) -> ValueError:
    return ValueError(f"{path}: {where}: {why}")


def _image_path(base: Path, ref: Any, path: Path, where: str) -> Path:
    if not isinstance(ref, str) or not ref:
        raise _fail(path, where, f"image reference must be a non-empty string, got {ref!r}")
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif "://" in ref or ref.startswith("data:"):
        raise _fail(path, where, f"only local image files are supported, got {ref[:60]!r}")
    image = Path(ref) if Path(ref).is_absolute() else base / ref
    if not image.is_file():
        raise _fail(path, where, f"image file {image} does not exist")
    return image


_LLAVA_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


def _llava_record(record: Any, index: int, path: Path) -> SFTConversation:
    where = f"record {index}"
    if not isinstance(record, dict):
        raise _fail(path, where, "not an object")
    rid = str(record.get("id", index))
    where = f"record {index} (id {rid})"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise _fail(path, where, "'conversations' must be a non-empty list")
    refs = record.get("image")
    refs = [] if refs is None else [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, list):
        raise _fail(path, where, "'image' must be a path or a list of paths")
    images = [_image_path(path.parent, ref, path, where) for ref in refs]
    messages: list[dict[str, Any]] = []
    markers = 0
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _fail(path, f"{where}, turn {t}", "each turn needs a string 'value'")
        role = _LLAVA_ROLES.get(turn.get("from"))  # type: ignore[arg-type]
        if role is None:
            raise _fail(path, f"{where}, turn {t}", f"'from' must be human or gpt, got {turn.get('from')!r}")
        value: str = turn["value"]
        if IMAGE_MARKER not in value:
            messages.append({"role": role, "content": value})
            continue
        parts: list[dict[str, Any]] = []
        pieces = value.split(IMAGE_MARKER)
        for k, piece in enumerate(pieces):
            if k > 0:
                parts.append({"type": "image"})
                markers += 1
                piece = piece[1:] if piece.startswith("\n") else piece  # "<image>\n" is one marker
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    if markers != len(images):
        raise _fail(path, where, f"{markers} <image> markers but {len(images)} image paths")
    _check_roles(messages, path, where)
    return SFTConversation(rid, messages, images)


def _chat_record(record: Any, lineno: int, path: Path) -> SFTConversation:
    where = f"line {lineno}"
    if not isinstance(record, dict):
        raise _fail(path, where, "not an object")
    rid = str(record.get("id", lineno))
    where = f"line {lineno} (id {rid})"
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, where, "'messages' must be a non-empty list")
    messages: list[dict[str, Any]] = []
    images: list[Path] = []
    for m, msg in enumerate(raw):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise _fail(path, f"{where}, message {m}", "needs a role of system, user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            messages.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise _fail(path, f"{where}, message {m}", "'content' must be a string or a list of parts")
        parts: list[dict[str, Any]] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                url = part.get("image_url")
                ref = url.get("url") if isinstance(url, dict) else url
                images.append(_image_path(path.parent, ref, path, f"{where}, message {m}"))
                parts.append({"type": "image"})
            elif kind == "image":
                ref = part.get("path") or part.get("url") or part.get("image")
                images.append(_image_path(path.parent, ref, path, f"{where}, message {m}"))
                parts.append({"type": "image"})
            else:
                raise _fail(path, f"{where}, message {m}", f"unsupported content part {part!r:.80}")
        messages.append({"role": msg["role"], "content": parts})
    _check_roles(messages, path, where)
    return SFTConversation(rid, messages, images)


def _check_roles(messages: list[dict[str, Any]], path: Path, where: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise _fail(path, where, "has no assistant turn: nothing to learn from")


def load_demonstrations(path: str | Path) -> list[SFTConversation]:
    """Read a LLaVA JSON file (a list of records) or a chat JSONL file (one record a line).

    The format is taken from the content (a JSON list, else JSON lines). Malformed files are a
    ValueError naming the file and the record.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such demonstration file")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
        conversations = [_llava_record(r, i, path) for i, r in enumerate(records)]
    else:
        conversations = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: not valid JSON: {exc.msg}") from None
            conversations.append(_chat_record(record, lineno, path))
    if not conversations:
        raise ValueError(f"{path}: holds no demonstrations")
    return conversations


# -- tokenising ------------------------------------------------------------------------------------


def _encode(conv: SFTConversation, owner: Any) -> dict[str, Any]:
    from PIL import Image

    if is_processor(owner):
        images = []
        for p in conv.images:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        # The processor expands each <image> into the model's image tokens; the offsets let the
        # assistant mask be computed on the expanded ids.
        return owner.apply_chat_template(
            [_with_images(conv.messages, images)],
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
        )
    if conv.has_images:
        raise ValueError(f"demonstration {conv.id} has images but the model takes text only (use a VLM)")
    return owner.apply_chat_template(
        conv.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )


def _with_images(messages: list[dict[str, Any]], images: list[Any]) -> list[dict[str, Any]]:
    """Attach the loaded images to the image parts, in order (what processors' templates read)."""
    queue = iter(images)
    out = []
    for msg in messages:
        if isinstance(msg["content"], list):
            parts = [
                {"type": "image", "image": next(queue)} if p["type"] == "image" else dict(p)
                for p in msg["content"]
            ]
            out.append({"role": msg["role"], "content": parts})
        else:
            out.append(dict(msg))
    return out


def tokenize_sft(
    conversations: Iterable[SFTConversation],
    tokenizer_or_processor: Any,
    max_len: int,
    overflow: Literal["drop", "truncate", "error"] = "drop",
) -> list[SFTExample]:
    """Rows for :meth:`LearnerWorker.sft_step`; labels only on assistant tokens.

    A row longer than ``max_len`` is dropped (default, with one warning for all of them), cut to
    ``max_len`` (text only: cutting through image tokens would break the model's image alignment)
    or an error.
    """
    import torch

    examples: list[SFTExample] = []
    dropped, seen, shortest_dropped = 0, 0, None
    for conv in conversations:
        seen += 1
        enc = _encode(conv, tokenizer_or_processor)
        ids = torch.as_tensor(enc["input_ids"]).reshape(-1).long()
        mask = torch.as_tensor(enc["assistant_masks"]).reshape(-1).bool()
        if mask.shape != ids.shape:
            raise ValueError(f"demonstration {conv.id}: assistant mask and token ids differ in length")
        if not mask.any():
            raise ValueError(
                f"demonstration {conv.id}: the chat template marks no assistant tokens; "
                "it needs {% generation %} blocks around assistant turns"
            )
        labels = torch.where(mask, ids, torch.full_like(ids, IGNORE_INDEX))
        pixel_values = enc.get("pixel_values")
        pixel_mask = enc.get("pixel_attention_mask")
        if ids.numel() > max_len:
            if overflow == "error":
                raise ValueError(
                    f"demonstration {conv.id} has {ids.numel()} tokens, more than max_len {max_len}"
                )
            if overflow == "drop" or pixel_values is not None:
                dropped += 1
                shortest_dropped = min(shortest_dropped or ids.numel(), ids.numel())
                continue
            ids, labels = ids[:max_len], labels[:max_len]
            if not (labels[1:] != IGNORE_INDEX).any():
                dropped += 1
                continue
        if pixel_values is not None:
            pixel_values = pixel_values.reshape(-1, *pixel_values.shape[-3:])
            if pixel_mask is not None:
                pixel_mask = pixel_mask.reshape(-1, *pixel_mask.shape[-2:])
        examples.append(SFTExample(ids, labels, pixel_values, pixel_mask, conv.id))
    if dropped:
        log.warning("dropped %d of %d demonstrations longer than max_len %d", dropped, seen, max_len)
    if not examples:
        hint = f" (the shortest has {shortest_dropped}: raise max_len)" if shortest_dropped else ""
        raise ValueError(f"no demonstration fits in max_len {max_len} tokens{hint}")
    return examples
