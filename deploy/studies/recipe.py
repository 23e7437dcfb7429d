"""Study recipes: reading ``configs/studies/NAME.yaml`` into a typed :class:`Study`.

A recipe holds

- ``sizes``: variables per size (``tiny`` runs on a laptop CPU in minutes, ``small`` is SmolLM2-135M
  for hours on a CPU, ``paper`` the papers' models and settings for a GPU cluster), substituted as
  ``${var}`` into the rest of the file before it is parsed;
- ``base``: TrainConfig settings shared by every training arm;
- ``arms``, in order: ``train`` (a TrainConfig on top of ``base``), ``data_mix`` (deploy.studies.data_mixing)
  , ``merge_sweep`` (deploy.studies.merge_sweep) or ``pick`` (deploy.studies.pick: per seed, the best of
  earlier arms or merges by success on one suite). A value ``"@ARM"`` names an earlier arm's output: the last
  checkpoint of a training arm, the data file of a data-mixing arm;
- ``levels`` (optional): tag the ID items with a model's pass rate (paper 2's L1..L5), then report
  the final accuracy per level of each training arm and pick arm;
- ``questions``: what the study asks, each as a difference between two arms on one suite (``a``
  minus ``b``); the report answers each with a 95% interval and says whether it excludes zero.

``_bases.yaml`` holds the bases and stages recipes share (``base: {extends: NAME}``, stages
``{use: NAME}``); ``_sizes.yaml`` the variables every recipe gets per size. Every arm's config is
checked when the recipe loads, not hours later when the arm starts.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from sftrl.config import ConfigError, StrictModel, apply_overrides, build

STUDIES_DIR = Path(__file__).resolve().parents[1] / "configs" / "studies"  # package data: in a wheel too
Size = Literal["tiny", "small", "paper"]
ARM_REF = re.compile(r"@([A-Za-z0-9_.-]+)")  # a whole config value "@ARM": that arm's output in the seed


class StudyArm(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: Literal["train", "data_mix", "merge_sweep", "pick"] = "train"
    label: str = ""  # how reports name the arm (default: its name)
    config: dict[str, Any] = {}


class LevelsSpec(StrictModel):
    model: str = Field(description="the model whose pass rates define the levels (a name, folder or @ARM)")
    suite: str = "id"
    options: dict[str, Any] = Field({}, description="environment options over the suite's (tagging and play)")
    items: int = Field(64, ge=1, description="items tagged (when per_level is not set)")
    per_level: int | None = Field(
        None, ge=1, description="draw items until every level holds this many, and keep that many of each"
    )
    max_items: int = Field(4096, ge=1, description="most items drawn to fill the levels")
    batch: int = Field(256, ge=1, description="items tagged at a time while filling")
    samples: int = Field(16, ge=1)
    seed: int = 40_000
    max_tokens: int = Field(256, ge=1, description="answer length when tagging (arms: their evaluation's)")
    arm_options: list[str] = Field(
        ["reasoning"], description="environment options each arm plays the items with from its own config"
    )


class StudyQuestion(StrictModel):
    """One question of a study: does ``metric`` on ``suite`` differ between arms ``a`` and ``b``?
    ``accuracy`` is accuracy on the study's tagged items, ``suite`` a level (L1..L5) or ``all``;
    ``first_answer`` the share of episodes whose first answer is right (before any feedback);
    ``recognition`` the share of first answers naming all four cards."""

    text: str
    a: str
    b: str
    suite: str = "id"
    metric: Literal["success", "adherence", "accuracy", "first_answer", "recognition"] = "success"

    @model_validator(mode="after")
    def _levels_name_a_level(self) -> StudyQuestion:
        if self.metric == "accuracy" and self.suite not in {"L1", "L2", "L3", "L4", "L5", "all"}:
            raise ValueError(f"question {self.text!r}: accuracy is per level; suite must be L1..L5 or all")
        return self


class FrontierSpec(StrictModel):
    """Methods as groups of arms (each a learning rate) for rule-OOD-against-ID frontiers
    (:mod:`deploy.studies.frontier`); the questions are asked of methods, not arms."""

    start: str = Field(
        description="the arm every method starts from (its final evaluation is every frontier's start)"
    )
    methods: dict[str, list[str]] = Field(min_length=2, description="method name -> its arms")
    compare: tuple[str, str] = Field(
        description="methods (a, b): a minus b on rule OOD at matched ID success"
    )
    id_suite: str = "id"
    ood_suite: str = "ood_rule"


class Study(StrictModel):
    name: str
    title: str
    paper: str = ""
    question: str = ""
    size: Size = "tiny"
    seeds: int = Field(1, ge=1, le=64, description="replicates of every arm (seeds 0..N-1)")
    base: dict[str, Any] = {}
    arms: list[StudyArm] = Field(min_length=1)
    levels: LevelsSpec | None = None
    questions: list[StudyQuestion] = []
    frontier: FrontierSpec | None = None

    @model_validator(mode="after")
    def _questions_name_arms(self) -> Study:
        names = {a.name for a in self.arms}
        for q in self.questions:
            if q.metric == "accuracy" and self.levels is None:
                raise ValueError(f"question {q.text!r} asks about levels; the recipe tags none (add levels:)")
            for arm in (q.a, q.b):
                if arm not in names:
                    raise ValueError(
                        f"question {q.text!r} names arm {arm!r}; arms: {', '.join(sorted(names))}"
                    )
        for i, arm in enumerate(self.arms):
            if arm.kind == "pick":
                _check_pick(arm, self.arms[:i])
        if self.frontier is not None:
            f = self.frontier
            named = [f.start, *(a for arms in f.methods.values() for a in arms)]
            unknown = sorted(set(named) - names)
            if unknown:
                raise ValueError(f"frontier names arms {unknown}; arms: {', '.join(sorted(names))}")
            if not set(f.compare) <= set(f.methods):
                raise ValueError(f"frontier.compare {list(f.compare)} names no method of {sorted(f.methods)}")
        return self


def recipe_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = STUDIES_DIR / f"{name}.yaml"
    if name.startswith("_") or not candidate.exists():
        known = ", ".join(r["name"] for r in list_recipes())
        raise ConfigError(f"unknown study {name!r}; known: {known}")
    return candidate


def list_recipes() -> list[dict[str, str]]:
    out = []
    for path in sorted(STUDIES_DIR.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        _, body = _split(path)
        raw = yaml.safe_load(body) or {}
        out.append(
            {"name": path.stem, "title": str(raw.get("title", "")), "paper": str(raw.get("paper", ""))}
        )
    return out


def _split(path: Path) -> tuple[dict[str, Any], str]:
    """A recipe's own size variables (an optional first YAML document) and its body."""
    text = path.read_text(encoding="utf-8")
    if not text.startswith("sizes:") and "\n---\n" not in text:
        return {}, text
    head_text, body = text.split("\n---\n", 1)
    try:
        head = yaml.safe_load(head_text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"study {path}: its sizes document is not valid YAML: {exc}") from None
    sizes = head.get("sizes") if isinstance(head, dict) else None
    if not isinstance(sizes, dict):
        raise ConfigError(f"study {path}: the first document must be a mapping with sizes: {{tiny: ...}}")
    return sizes, body


def size_variables(path: Path, size: str) -> dict[str, Any]:
    """configs/studies/_sizes.yaml's variables for ``size``, with the recipe's own on top."""
    shared = yaml.safe_load((STUDIES_DIR / "_sizes.yaml").read_text(encoding="utf-8"))
    if size not in shared:
        raise ConfigError(f"unknown size {size!r}; sizes: {', '.join(shared)}")
    own, _ = _split(path)
    return {**shared[size], **(own.get(size) or {})}


def load_study(
    name: str,
    size: Size = "tiny",
    overrides: list[str] | None = None,
    seeds: int | None = None,
    variables: dict[str, Any] | None = None,
) -> Study:
    """Read a recipe at ``size``: its variables substituted (``variables`` on top of the size's),
    then ``overrides`` (key=value) applied; ``seeds`` (when given) replaces the recipe's number of
    seeds."""
    path = recipe_path(name)
    _, body = _split(path)
    chosen = {**size_variables(path, size), **(variables or {})}
    variables = {k: json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v
                 for k, v in chosen.items()}  # fmt: skip
    data = _substitute(path, body, variables, size)
    shared = _substitute(
        STUDIES_DIR / "_bases.yaml", (STUDIES_DIR / "_bases.yaml").read_text(), variables, size
    )
    data = _expand(data, shared, path)
    data = apply_overrides({**data, "name": data.get("name", path.stem), "size": size}, overrides or [])
    if seeds is not None:
        data["seeds"] = seeds
    study = build(Study, data, source=f"study {path.name} ({size})")
    for arm in study.arms:  # every arm's config is checked now, not hours later when it starts
        arm_config(study, arm, lambda value: value)
    return study


def _check_pick(arm: StudyArm, earlier: list[StudyArm]) -> None:
    from deploy.studies.pick import PickConfig

    config = build(PickConfig, arm.config, source=f"arm {arm.name}")
    kinds = {a.name: a.kind for a in earlier}
    bad = [n for n in config.among if kinds.get(n) not in ("train", "merge_sweep")]
    if bad:
        raise ValueError(f"pick arm {arm.name} picks among {bad}: name earlier training or merge-sweep arms")


def _named_arms(value: Any) -> set[str]:
    """Every ``@ARM`` a config value names, at any depth."""
    if isinstance(value, dict):
        return set().union(*map(_named_arms, value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*map(_named_arms, value)) if value else set()
    found = ARM_REF.fullmatch(value) if isinstance(value, str) else None
    return {found.group(1)} if found else set()


def arms_left_out(study: Study, names: list[str] | tuple[str, ...]) -> frozenset[str]:
    """``names`` checked as arms a run may leave out (``sftrl study --skip``): each an arm of ``study``,
    none that a kept arm, the levels or the frontier's start take a model or data from. A question about
    a left-out arm is reported as not answered; a later run without ``--skip`` fills the arm in."""
    skip, arms = frozenset(names), [a.name for a in study.arms]
    unknown = sorted(skip - set(arms))
    if unknown:
        raise ConfigError(
            f"--skip {', '.join(unknown)}: no such arm in {study.name}; arms: {', '.join(arms)}"
        )
    needs: dict[str, set[str]] = {
        f"arm {a.name}": _named_arms(a.config) | (set(a.config.get("among") or []) if a.kind == "pick" else set())
        for a in study.arms
        if a.name not in skip
    }  # fmt: skip
    needs["the levels"] = _named_arms(study.levels.model) if study.levels else set()
    needs["the frontier"] = {study.frontier.start} if study.frontier else set()
    for user, needed in needs.items():
        if needed & skip:
            left = ", ".join(sorted(needed & skip))
            raise ConfigError(
                f"--skip {left}: {user} starts from or chooses among it; keep it or skip that too"
            )
    return skip


def arm_config(study: Study, arm: StudyArm, resolve: Any) -> Any:
    """The typed config of ``arm`` (``resolve`` maps its values, e.g. ``@ARM`` to that arm's output)."""
    from deploy.studies.data_mixing import DataMixConfig
    from deploy.studies.merge_sweep import MergeSweepConfig
    from deploy.train.config import TrainConfig

    base, own = resolve(study.base), resolve(arm.config)
    source = f"study {study.name}, arm {arm.name}"
    if arm.kind == "train":
        return build(TrainConfig, _deep_merge(base, own), source=source)
    if arm.kind == "pick":
        from deploy.studies.pick import PickConfig

        return build(PickConfig, own, source=source)
    own.setdefault("env", base.get("env", {}))
    # the study's engine settings (max_model_len within the model's positions, dtype) by default
    own.setdefault("engine", (base.get("rollout") or {}).get("engine", {}))
    if arm.kind == "data_mix":
        return build(DataMixConfig, own, source=source)
    own.setdefault("suites", (base.get("eval") or {}).get("suites", {"id": {}}))
    return build(MergeSweepConfig, own, source=source)


def _substitute(path: Path, text: str, variables: dict[str, Any], size: str) -> dict[str, Any]:
    try:
        filled = string.Template(text).substitute(variables)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"study {path}: size {size!r} does not define {exc}") from None
    try:
        data = yaml.safe_load(filled) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"study {path} at size {size} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"study {path} must be a mapping at the top level")
    return data


def _expand(data: dict[str, Any], shared: dict[str, Any], path: Path) -> dict[str, Any]:
    """Resolve ``base: {extends: NAME}`` and stages ``{use: NAME}`` against _bases.yaml."""

    def pick(kind: str, name: Any) -> dict[str, Any]:
        table = shared.get(kind) or {}
        if name not in table:
            raise ConfigError(f"study {path}: unknown {kind[:-1]} {name!r}; known: {', '.join(table)}")
        return dict(table[name])

    base = dict(data.get("base") or {})
    if "extends" in base:
        base = _deep_merge(pick("bases", base.pop("extends")), base)
    data["base"] = base
    for arm in data.get("arms") or []:
        stages = (arm.get("config") or {}).get("stages")
        if isinstance(stages, list):
            arm["config"]["stages"] = [
                _deep_merge(pick("stages", st.pop("use")), st) if isinstance(st, dict) and "use" in st else st
                for st in stages
            ]
    return data


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
