"""The PPO value head: a small MLP on the policy's last hidden state, one scalar per position.

It is trained together with the policy (one DeepSpeed engine owns both) but saved apart from it,
in its own folder: vLLM refuses a checkpoint with keys its model does not know.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class ValueHead(nn.Module):
    """``hidden -> Linear(hidden, inner) -> GELU -> Linear(inner, 1)``; the output layer starts at 0,
    so the first value estimates are 0 and the first advantages are the plain returns."""

    def __init__(self, hidden_size: int, inner_size: int | None = None):
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_size = inner_size or hidden_size
        self.net = nn.Sequential(
            nn.Linear(hidden_size, self.inner_size), nn.GELU(), nn.Linear(self.inner_size, 1)
        )
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., hidden] -> [...] (computed in fp32 whatever the policy's dtype)."""
        return self.net(hidden.to(self.net[0].weight.dtype)).squeeze(-1).float()

    def config(self) -> dict[str, int]:
        return {"hidden_size": self.hidden_size, "inner_size": self.inner_size}


def save_value_head(state: dict[str, torch.Tensor], config: dict[str, int], folder: Path) -> list[Path]:
    """Write ``folder/model.safetensors`` and ``folder/config.json``; returns the weight files."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / WEIGHTS_NAME))
    (folder / CONFIG_NAME).write_text(json.dumps({"kind": "sftrl-value-head", **config}, indent=1) + "\n")
    return [folder / WEIGHTS_NAME]


def load_value_head(folder: Path) -> ValueHead:
    """A :class:`ValueHead` from a folder written by :func:`save_value_head`."""
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
        head = ValueHead(int(config["hidden_size"]), int(config["inner_size"]))
        head.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"cannot load the value head in {folder}: {exc}") from None
    return head
