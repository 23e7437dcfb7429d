"""``sftrl env list``: the environments and their options, read from their pydantic models."""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from services.envs import ENV_ENTRY_POINTS, options_model


def describe_envs() -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {}
    for env_id in ENV_ENTRY_POINTS:
        rows = []
        for name, info in options_model(env_id).model_fields.items():
            type_text = str(info.annotation).replace("typing.", "")
            default = "(required)" if info.default is PydanticUndefined else repr(info.default)
            rows.append((name, type_text, default))
        out[env_id] = rows
    return out
