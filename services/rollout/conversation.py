"""Token-in, token-out conversations for multi-turn episodes.

Turn k+1's prompt is built as turn k's prompt ids + the sampled response ids + the tokens of the
template's turn closing and the next user message. Re-tokenising the whole conversation instead
could split the model's own text differently from how it was sampled, and the learner would then
train on tokens the policy never produced. The chat template is still the single source of the
format: the closing and user parts are cut out of its rendering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.rollout.engine import PromptInput


@dataclass
class ChatFormatter:
    """Renders messages with a model's chat template (a tokenizer's, or a VLM processor's)."""

    tokenizer: Any
    processor: Any | None = None  # set for vision-language models

    @property
    def is_vision(self) -> bool:
        return self.processor is not None

    def _message(self, role: str, text: str, with_image: bool) -> dict[str, Any]:
        if not self.is_vision:
            return {"role": role, "content": text}
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        return {"role": role, "content": content}

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        owner = self.processor if self.is_vision else self.tokenizer
        return owner.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def chat_prompt(self, messages: list[dict[str, str]]) -> PromptInput:
        """A text-only chat (``{"role", "content"}`` messages) as the prompt of the assistant's reply."""
        rendered = [self._message(m["role"], m["content"], with_image=False) for m in messages]
        return PromptInput(self.encode(self.render(rendered, add_generation_prompt=True)))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def eos_text(self) -> str | None:
        tok = getattr(self.tokenizer, "eos_token", None)
        return tok if isinstance(tok, str) else None


@dataclass
class Conversation:
    """One episode's dialogue, kept both as messages (for people) and as token ids (for the engine)."""

    formatter: ChatFormatter
    messages: list[dict[str, Any]] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    text_messages: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def start(cls, formatter: ChatFormatter, user_text: str, image: Any | None = None) -> Conversation:
        conv = cls(formatter)
        conv._append_user(user_text, image)
        conv.token_ids = formatter.encode(formatter.render(conv.messages, add_generation_prompt=True))
        return conv

    def _append_user(self, text: str, image: Any | None) -> None:
        if image is not None and not self.formatter.is_vision:
            raise ValueError("this episode has images but the model has no image processor (use a VLM)")
        self.messages.append(self.formatter._message("user", text, image is not None))
        self.text_messages.append({"role": "user", "content": text})
        if image is not None:
            self.images.append(image)

    def prompt(self) -> PromptInput:
        return PromptInput(list(self.token_ids), tuple(self.images))

    def add_turn(
        self, response_ids: list[int], response_text: str, user_text: str, image: Any | None = None
    ) -> None:
        """Append the sampled response and the next user message, extending the token ids."""
        fmt = self.formatter
        base = fmt.render(self.messages, add_generation_prompt=True)
        self.messages.append(fmt._message("assistant", response_text, False))
        self.text_messages.append({"role": "assistant", "content": response_text})
        closed = fmt.render(self.messages, add_generation_prompt=False)
        if not closed.startswith(base + response_text):
            raise ValueError(
                "the chat template rewrites assistant text; multi-turn token stitching needs one that does not"
            )
        closing = closed[len(base) + len(response_text) :]
        eos = fmt.eos_text
        eos_id = getattr(fmt.tokenizer, "eos_token_id", None)
        if eos and response_ids and response_ids[-1] == eos_id and closing.startswith(eos):
            closing = closing[len(eos) :]  # the engine already produced the end-of-turn token
        self._append_user(user_text, image)
        following = fmt.render(self.messages, add_generation_prompt=True)
        if not following.startswith(closed):
            raise ValueError("the chat template renders earlier turns differently once a turn is added")
        self.token_ids = self.token_ids + list(response_ids) + fmt.encode(closing + following[len(closed) :])

    def finish(self, response_text: str) -> None:
        self.text_messages.append({"role": "assistant", "content": response_text})
