"""The module the learner's engine trains: the HF policy and, for PPO, its value head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from services.learner.value_head import ValueHead


class PolicyModule(nn.Module):
    """What the engine trains: the HF policy and, for PPO, its value head (one optimizer for both)."""

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> logits [B, T, V] (of the last ``logits_to_keep`` positions when > 0), values [B, T] (None
        without a value head)."""
        extra: dict[str, Any] = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        if pixel_values is not None:
            extra["pixel_values"] = pixel_values
            if pixel_attention_mask is not None:
                extra["pixel_attention_mask"] = pixel_attention_mask
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            output_hidden_states=self.value_head is not None,
            **extra,
        )
        values = self.value_head(out.hidden_states[-1]) if self.value_head is not None else None
        return out.logits, values


def checkpoint_naming(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as ``save_pretrained`` writes it (transformers 5): tied aliases dropped (by
    storage, so this runs on the live tensors) and weight renamings reverted."""
    try:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict

        state = remove_tied_weights_from_state_dict(state, model)
    except ImportError:  # older transformers: nothing is renamed; tied copies are harmless
        pass
    try:
        from transformers.core_model_loading import revert_weight_conversion

        state = revert_weight_conversion(model, state)
    except ImportError:
        pass
    return state


def load_policy(model_path: str, vision: bool, dtype: torch.dtype) -> nn.Module:
    """The HF model at ``model_path`` for training (no KV cache), as a VLM when ``vision``."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(model_path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load {model_path} as a {cls.__name__}: {exc}") from exc
    model.config.use_cache = False
    return model
