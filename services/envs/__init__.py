"""sftrl environments, registered with gymnasium on import.

import gymnasium, services.envs
env = gymnasium.make("sftrl/GeneralPoints-v0", mode="image", face_cards="as_11_12_13")
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

ENV_ENTRY_POINTS: dict[str, str] = {
    "sftrl/GeneralPoints-v0": "services.envs.general_points:GeneralPointsEnv",
    "sftrl/VIRL-v0": "services.envs.virl:VIRLEnv",
    "sftrl/VisualQA-v0": "services.envs.visual_qa:VisualQAEnv",
}

for _env_id, _entry_point in ENV_ENTRY_POINTS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point=_entry_point)


def make(env_id: str, **options: Any) -> gym.Env:
    """``gymnasium.make`` with a clear error for unknown ids."""
    options_model(env_id)  # clear error for an unknown id
    return gym.make(env_id, **options)


def options_model(env_id: str) -> type:
    """The pydantic model of an environment's options (imports only that environment)."""
    import importlib

    if env_id not in ENV_ENTRY_POINTS:
        known = ", ".join(sorted(ENV_ENTRY_POINTS))
        raise ValueError(f"unknown environment {env_id!r}; known: {known}")
    module, _, cls_name = ENV_ENTRY_POINTS[env_id].partition(":")
    return getattr(importlib.import_module(module), cls_name).options_model


def file_options(env_id: str) -> list[str]:
    """The options of ``env_id`` that name a file to open (marked ``names_a_file`` in its model):
    a server never takes them from a client as paths."""
    fields = options_model(env_id).model_fields
    return [
        name
        for name, f in fields.items()
        if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("names_a_file")
    ]


def resolve_options(env_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` for ``env_id`` and return them with every default filled in."""
    from sftrl.config import build

    return build(options_model(env_id), options, source=f"options for {env_id}").model_dump(mode="json")


def register_with_ray() -> list[str]:
    """Register every sftrl environment with ``ray.tune.register_env`` (for RLlib).

    The env config dict passed by RLlib becomes the environment's keyword options.
    """
    from functools import partial

    from ray.tune.registry import register_env

    for env_id in ENV_ENTRY_POINTS:
        # A module-level function is pickled by reference, so a Ray worker that builds the env
        # imports this module first, which registers the ids with gymnasium there too.
        register_env(env_id, partial(_create_for_ray, env_id))
    return list(ENV_ENTRY_POINTS)


def _create_for_ray(env_id: str, config: Any) -> gym.Env:
    return gym.make(env_id, **dict(config or {}))
