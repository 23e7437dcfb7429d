"""Typed configuration: pydantic models loaded from YAML and overridden from the command line.

Every run writes the resolved config beside its outputs (:func:`write_resolved_config`) so that a
result can always be traced back to the exact settings that produced it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from sftrl.errors import ConfigError as ConfigError  # here for every caller; sftrl.files raises it too
from sftrl.files import write_atomic

RESOLVED_CONFIG_NAME = "resolved_config.yaml"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors (typos must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _keep_section_defaults(cls, data: Any) -> Any:
        """A section given in part keeps its default's other settings.

        Where a field's default is a configured section (evaluation sampling defaults to greedy,
        ``SamplingConfig(temperature=0.0, ...)``), pydantic builds a partial mapping from the class
        defaults instead: ``eval.sampling.max_tokens=64`` alone would sample evaluations at T = 1.
        """
        if not isinstance(data, Mapping):
            return data
        merged: dict[str, Any] | None = None
        for name, field in cls.model_fields.items():
            given = data.get(name)
            if isinstance(field.default, BaseModel) and isinstance(given, Mapping):
                merged = merged if merged is not None else dict(data)
                merged[name] = {**field.default.model_dump(exclude_unset=True), **given}
        return merged if merged is not None else data


ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value (``3`` -> int, ``[1,2]`` -> list)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. learner.lr=1e-6)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: keep the literal string
    path = key.split(".")
    if any(not part for part in path):
        raise ConfigError(f"override key {key!r} has an empty part")
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted ``key=value`` overrides applied (creating sections).

    A numeric part indexes a list: ``stages.0.steps=100`` sets the first stage's steps.
    """
    result = json.loads(json.dumps(data, default=str)) if data else {}
    for item in overrides:
        path, value = parse_override(item)
        node: Any = result
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"override {item!r}: {part!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {path[depth - 1]!r} is a value, not a section")
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every kind of failure into a :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    lines = [f"invalid {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def build(model_cls: type[ModelT], data: Mapping[str, Any], source: str = "config") -> ModelT:
    """Validate ``data`` into ``model_cls``; errors become one readable :class:`ConfigError`."""
    try:
        return model_cls.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(
    model_cls: type[ModelT], path: str | Path | None = None, overrides: Iterable[str] = ()
) -> ModelT:
    """Load ``model_cls`` from an optional YAML file, then apply ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return build(model_cls, data, source=str(path) if path else "config")


def write_resolved_config(
    config: BaseModel,
    out_dir: str | Path,
    name: str = RESOLVED_CONFIG_NAME,
    notes: dict[str, str] | None = None,
) -> Path:
    """Write the fully resolved config (defaults included) as YAML into ``out_dir``; ``notes`` (e.g. why
    a precision was chosen) go above it as comments."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    payload = config.model_dump(mode="json")
    head = "".join(f"# {key}: {' '.join(str(value).split())}\n" for key, value in (notes or {}).items())
    return write_atomic(target, head + yaml.safe_dump(payload, sort_keys=False))


# -- run configs shared across commands ---------------------------------------------------------


class EnvSpec(StrictModel):
    """Which environment, with which options (validated by the environment itself)."""

    id: str = "sftrl/GeneralPoints-v0"
    options: dict[str, Any] = {}


class SFTDataConfig(StrictModel):
    """``sftrl data sft``: expert demonstrations for supervised fine-tuning."""

    env: EnvSpec = EnvSpec()
    episodes: int = 1000
    seed: int = 0
    revision_fraction: float = 0.3
    formats: list[Literal["llava", "chat"]] = ["llava", "chat"]
    out: str = "data/sft.json"
