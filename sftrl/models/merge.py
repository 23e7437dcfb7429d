"""Merging HF-format models (prepared models or checkpoints) with mergekit: linear, SLERP and TIES.

mergekit does the tensor arithmetic (it is the maintained reference implementation of these methods
and knows which tensors of an architecture to merge); this module validates what the user asked for,
checks that the models fit together, and writes the result atomically as a model folder that
transformers and vLLM load (weights, config, tokenizer/processor files and the chat template), with
``merge.json`` recording how it was made.

- ``linear``: sum_i w_i * theta_i (weights normalised to sum 1 unless ``normalize=False``);
- ``slerp``: spherical interpolation of each weight row from model A (t = 0) to model B (t = 1),
  falling back to linear interpolation where rows are (anti)parallel;
- ``ties``: task vectors theta_i - base, each trimmed to its ``density`` largest magnitudes, weighted,
  a sign elected per parameter by the summed deltas, and the agreeing deltas averaged onto the base.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from sftrl.config import StrictModel, build
from sftrl.models.store import resolve_model

MergeMethod = Literal["linear", "slerp", "ties"]
MERGE_RECORD = "merge.json"
# Files of a model folder that are not the policy's weights or config: carried over from the reference
# model when mergekit does not write them (processor files of vision models, our own records excluded).
_SKIP = {"config.json", "model.safetensors.index.json", "COMPLETE", "trainer_state.json", "sftrl_model.json"}


class MergeError(ValueError):
    """A merge that cannot be done as asked; the message says which model or setting and why."""


class MergeSpec(StrictModel):
    """What to merge and how; validated before any weight is read."""

    method: MergeMethod
    models: list[str] = Field(min_length=1)
    weights: list[float] | None = Field(None, description="linear and ties: one weight per model")
    t: float | None = Field(None, ge=0.0, le=1.0, description="slerp: 0 gives the first model, 1 the second")
    base: str | None = Field(None, description="ties: the model the others' task vectors are taken from")
    density: float = Field(0.5, gt=0.0, le=1.0, description="ties: fraction of each task vector kept")
    normalize: bool = Field(True, description="linear and ties: divide by the sum of the weights")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="of the merged weights; default: the reference model's"
    )

    @model_validator(mode="after")
    def _check(self) -> MergeSpec:
        n = len(self.models)
        if self.method == "slerp":
            if n != 2:
                raise ValueError(f"slerp merges exactly two models (got {n})")
            if self.t is None:
                raise ValueError("slerp needs t (0 gives the first model, 1 the second)")
            if self.weights is not None:
                raise ValueError("slerp takes t, not weights")
        else:
            if self.t is not None:
                raise ValueError(f"{self.method} takes weights, not t")
            if self.method == "linear" and n < 2:
                raise ValueError("linear merges at least two models")
            if self.weights is not None and len(self.weights) != n:
                raise ValueError(f"{len(self.weights)} weights for {n} models: give one weight per model")
            if self.weights is not None and self.normalize and abs(sum(self.weights)) < 1e-8:
                raise ValueError("the weights sum to 0 and cannot be normalised (or pass normalize=false)")
        if self.method == "ties" and not self.base:
            raise ValueError("ties needs a base model (the task vectors are taken from it)")
        if self.method != "ties" and self.base:
            raise ValueError(f"{self.method} takes no base model (ties does)")
        return self

    @property
    def reference(self) -> str:
        """The model whose tokenizer, chat template and config the merge keeps."""
        return self.base if self.method == "ties" and self.base else self.models[0]


def _model_folder(name: str) -> Path:
    try:
        path = resolve_model(name)
    except ValueError as exc:
        raise MergeError(str(exc)) from None
    folder = Path(path)
    if not folder.is_dir():
        raise MergeError(f"{name!r} is not a local model folder (merging needs the weights on disk)")
    if (folder / "COMPLETE").exists():  # an sftrl checkpoint: refuse a corrupt one before reading it
        from sftrl.checkpoint import verify

        try:
            verify(folder)
        except ValueError as exc:
            raise MergeError(str(exc)) from None
    if not any(folder.glob("*.safetensors")):
        raise MergeError(f"{folder} holds no *.safetensors weights")
    return folder


def _shape_signature(folder: Path) -> dict[str, Any]:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    keys = ("architectures", "hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size")
    text = config.get("text_config") or {}
    return {k: config.get(k, text.get(k)) for k in keys}


def _check_compatible(folders: dict[str, Path]) -> None:
    signatures = {name: _shape_signature(folder) for name, folder in folders.items()}
    first_name, first = next(iter(signatures.items()))
    for name, sig in signatures.items():
        diff = {k: (first[k], sig[k]) for k in first if first[k] != sig[k]}
        if diff:
            detail = ", ".join(f"{k}: {a} vs {b}" for k, (a, b) in diff.items())
            raise MergeError(f"{first_name} and {name} cannot be merged: different shapes ({detail})")


def mergekit_config(spec: MergeSpec, folders: dict[str, Path]) -> dict[str, Any]:
    """The mergekit configuration (as a dict) that carries out ``spec``."""
    models: list[dict[str, Any]] = []
    for i, name in enumerate(spec.models):
        params: dict[str, Any] = {}
        if spec.method in ("linear", "ties"):
            params["weight"] = spec.weights[i] if spec.weights is not None else 1.0
        if spec.method == "ties":
            params["density"] = spec.density
        models.append({"model": str(folders[name]), **({"parameters": params} if params else {})})
    config: dict[str, Any] = {"merge_method": spec.method, "models": models}
    if spec.method == "slerp":
        config["base_model"] = str(folders[spec.models[0]])
        config["parameters"] = {"t": spec.t}
    elif spec.method == "ties":
        config["base_model"] = str(folders[spec.base or ""])
        config["parameters"] = {"normalize": spec.normalize}
    else:
        config["parameters"] = {"normalize": spec.normalize}
    if spec.dtype:
        config["dtype"] = spec.dtype
    else:
        reference = json.loads((folders[spec.reference] / "config.json").read_text(encoding="utf-8"))
        dtype = reference.get("dtype") or reference.get("torch_dtype") or "float32"
        config["dtype"] = dtype if dtype in ("float32", "bfloat16", "float16") else "float32"
    return config


def merge_models(spec: MergeSpec, out: str | Path, overwrite: bool = False) -> Path:
    """Merge per ``spec`` into the folder ``out`` (written atomically); returns it."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    out = Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise MergeError(f"{out} exists; choose another folder or pass overwrite")
    names = list(dict.fromkeys([*spec.models, *([spec.base] if spec.base else [])]))
    if len(names) < len(spec.models) + (1 if spec.base else 0):
        raise MergeError("a model is named twice; a merge takes each model once")
    folders = {name: _model_folder(name) for name in names}
    _check_compatible(folders)
    config = mergekit_config(spec, folders)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        try:
            merge_config = MergeConfiguration.model_validate(config)
            run_merge(
                merge_config, str(tmp), MergeOptions(copy_tokenizer=True, quiet=True, lazy_unpickle=False)
            )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise MergeError(f"mergekit could not merge {', '.join(names)}: {exc}") from exc
        _carry_files(folders[spec.reference], tmp)
        record = {
            "spec": spec.model_dump(mode="json"),
            "folders": {name: str(folder) for name, folder in folders.items()},
            "mergekit": config,
            "seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=1), encoding="utf-8")
        if out.exists():  # moved aside, deleted only once the new merge is in its place
            aside = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(aside)
            os.replace(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _carry_files(reference: Path, out: Path) -> None:
    """Tokenizer, processor and chat-template files of the reference model that mergekit left out."""
    for path in reference.iterdir():
        if not path.is_file() or path.suffix == ".safetensors" or path.name in _SKIP:
            continue
        if not (out / path.name).exists():
            shutil.copy2(path, out / path.name)


def parse_spec(**fields: Any) -> MergeSpec:
    """A MergeSpec from command-line values (None = not given); a ConfigError says what is wrong."""
    return build(MergeSpec, {k: v for k, v in fields.items() if v is not None}, source="merge")
