"""The run/checkpoint/evaluation registry on Redis (see ``store`` for the key layout)."""

from sftrl.registry.connect import open_registry, registry_url
from sftrl.registry.local_server import LocalRedis
from sftrl.registry.records import (
    CheckpointRecord,
    EvaluationRecord,
    RunRecord,
    SuiteSpec,
    checkpoint_id,
    parse_checkpoint_ref,
)
from sftrl.registry.store import REGISTRY_ERRORS, Registry, RegistryError

__all__ = [
    "REGISTRY_ERRORS",
    "CheckpointRecord",
    "EvaluationRecord",
    "LocalRedis",
    "Registry",
    "RegistryError",
    "RunRecord",
    "SuiteSpec",
    "checkpoint_id",
    "open_registry",
    "parse_checkpoint_ref",
    "registry_url",
]
