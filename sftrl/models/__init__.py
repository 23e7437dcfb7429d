"""Models: the local cache of prepared models, and resolving a model name to what loaders take.

``resolve_model`` is what every part of sftrl calls wherever a model is named. Importing this
package imports no torch; the builders import torch and transformers only when a model is made.
"""

from __future__ import annotations

from sftrl.models.prepare import PrepareOptions, PrepareOutcome, prepare_model
from sftrl.models.store import (
    CATALOG,
    ModelRecord,
    PreparedModel,
    find_prepared,
    list_prepared,
    models_dir,
    resolve_model,
)

__all__ = [
    "CATALOG",
    "ModelRecord",
    "PrepareOptions",
    "PrepareOutcome",
    "PreparedModel",
    "find_prepared",
    "list_prepared",
    "models_dir",
    "prepare_model",
    "resolve_model",
]
