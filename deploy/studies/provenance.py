"""Which prepared models a study started from, kept in its folder (``models.json``) and its report.

A base is named (``gp-base``) but several can exist: one per models folder (``$SFTRL_MODELS_DIR``),
made with other seeds. The study records each catalogue model's record the first time it runs and
refuses to go on from a different one (a resumed study would mix bases without a word); the report
says which base every result comes from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftrl.config import ConfigError
from sftrl.files import write_atomic

MODELS_FILE = "models.json"  # in the study folder
_MAX_BYTES = 1 << 20
_KEPT = ("source", "options", "weights_sha256", "parameters", "created")


def model_identity(record: Any) -> dict[str, Any]:
    """What tells one prepared model from another of the same name (a :class:`ModelRecord`)."""
    return {key: getattr(record, key) for key in _KEPT}


def read_models(study_dir: Path) -> dict[str, dict[str, Any]]:
    """The study's recorded models by name; {} when none were recorded or the file is unreadable."""
    path = Path(study_dir) / MODELS_FILE
    try:
        if path.stat().st_size > _MAX_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def record_models(study_dir: Path, found: dict[str, Any]) -> None:
    """Record ``found`` (name -> ModelRecord) in the study folder; a model recorded earlier with other
    weights is an error that says how to go on."""
    recorded = read_models(study_dir)
    for name, record in found.items():
        earlier = recorded.get(name)
        if earlier and earlier.get("weights_sha256") != record.weights_sha256:
            raise ConfigError(
                f"{study_dir.name} started from another {name} (seed {_seed(earlier)}, weights "
                f"{str(earlier.get('weights_sha256'))[:12]}) than the one prepared now (seed "
                f"{record.options.get('seed', 0)}, weights {record.weights_sha256[:12]}): run it with the "
                "models folder it started with ($SFTRL_MODELS_DIR), or give it another --output-dir"
            )
    merged = {**recorded, **{name: model_identity(r) for name, r in found.items()}}
    write_atomic(Path(study_dir) / MODELS_FILE, json.dumps(merged, indent=1) + "\n")


def _seed(identity: dict[str, Any]) -> Any:
    options = identity.get("options")
    return options.get("seed", 0) if isinstance(options, dict) else "?"


def started_from(paths: list[str | Path]) -> tuple[list[str], dict[str, Any]]:
    """The report's line naming each study's models (seed, steps, weights), and the same for report.json."""
    models = {str(p): read_models(Path(p)) for p in paths}  # by folder: two bases' studies share a name
    models = {study: found for study, found in models.items() if found}
    if not models:
        return [], {}
    named = []
    for study, found in models.items():
        for name, identity in found.items():
            options = identity.get("options") if isinstance(identity.get("options"), dict) else {}
            made = ", ".join(f"{k} {v}" for k, v in options.items() if v is not None)
            where = f" in {study}" if len(models) > 1 else ""
            named.append(
                f"{name}{where} ({made + '; ' if made else ''}weights sha256 {str(identity.get('weights_sha256'))[:12]})"
            )
    return [f"Started from: {'; '.join(named)}.", ""], models
