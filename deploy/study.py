"""Studies: one recipe per experiment of the papers, run as a sequence of seeded arms.

A recipe (``configs/studies/NAME.yaml``) holds

- ``sizes``: variables per size (``tiny`` runs on a laptop CPU in minutes, ``small`` is SmolLM2-135M
  for hours on a CPU, ``paper`` the papers' models and settings for a GPU cluster), substituted as
  ``${var}`` into the rest of the file before it is parsed;
- ``base``: TrainConfig settings shared by every training arm;
- ``arms``, in order: ``train`` (a TrainConfig on top of ``base``), ``data_mix`` (deploy.data_mixing)
  or ``merge_sweep`` (deploy.merge_sweep). A value ``"@ARM"`` names an earlier arm's output: the last
  checkpoint of a training arm, the data file of a data-mixing arm;
- ``levels`` (optional): tag the ID items with a model's pass rate (paper 2's L1..L5), then report
  each training arm's final accuracy per level.

- ``questions``: what the study asks, each as a difference between two arms on one suite (``a``
  minus ``b``); the report answers each with a 95% interval and says whether it excludes zero.

A study runs ``seeds`` replicates of its arms (``--seeds N``): seed k moves the training seeds (data
order, demonstrations, sampling, RL tasks; so the initial SFT too), never the evaluation tasks. Each arm
writes into ``<out>/<study>-<size>/seed-<k>/<arm>/`` and a ``DONE`` marker when it finished, so a study
that was stopped continues with the first unfinished arm, and one run again with more seeds only runs
the new ones.
"""

from __future__ import annotations

import json
import re
import string
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, model_validator
from rich.console import Console

from sftrl.config import ConfigError, StrictModel, apply_overrides, build

if TYPE_CHECKING:
    from services.rollout.worker import RolloutWorker

STUDIES_DIR = Path(__file__).resolve().parent / "configs" / "studies"  # package data: in a wheel too
Size = Literal["tiny", "small", "paper"]
DONE = "DONE"
_REF = re.compile(r"@([A-Za-z0-9_.-]+)")


class StudyArm(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: Literal["train", "data_mix", "merge_sweep"] = "train"
    label: str = ""  # how reports name the arm (default: its name)
    config: dict[str, Any] = {}


class LevelsSpec(StrictModel):
    model: str = Field(description="the model whose pass rates define the levels (a name, folder or @ARM)")
    suite: str = "id"
    items: int = Field(64, ge=1)
    samples: int = Field(16, ge=1)
    seed: int = 40_000
    max_tokens: int = Field(256, ge=1)


class StudyQuestion(StrictModel):
    """One question of a study: does ``metric`` on ``suite`` differ between arms ``a`` and ``b``?"""

    text: str
    a: str
    b: str
    suite: str = "id"
    metric: Literal["success", "adherence"] = "success"


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

    @model_validator(mode="after")
    def _questions_name_arms(self) -> Study:
        names = {a.name for a in self.arms}
        for q in self.questions:
            for arm in (q.a, q.b):
                if arm not in names:
                    raise ValueError(
                        f"question {q.text!r} names arm {arm!r}; arms: {', '.join(sorted(names))}"
                    )
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


def arm_config(study: Study, arm: StudyArm, resolve: Any) -> Any:
    """The typed config of ``arm`` (``resolve`` maps its values, e.g. ``@ARM`` to that arm's output)."""
    from deploy.data_mixing import DataMixConfig
    from deploy.merge_sweep import MergeSweepConfig
    from deploy.train_config import TrainConfig

    base, own = resolve(study.base), resolve(arm.config)
    source = f"study {study.name}, arm {arm.name}"
    if arm.kind == "train":
        return build(TrainConfig, _deep_merge(base, own), source=source)
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


# -- running ---------------------------------------------------------------------------------------


class StudyRunner:
    def __init__(self, study: Study, out_root: str | Path = "runs/studies", console: Console | None = None):
        self.study = study
        self.dir = Path(out_root) / f"{study.name}-{study.size}"
        self.console = console or Console()
        self.outputs: dict[str, str] = {}
        self.seed = 0
        self.done_extra: dict[str, Any] = {}  # what the arm being run adds to its DONE marker

    def seed_dir(self, seed: int) -> Path:
        return self.dir / f"seed-{seed}"

    def _resolve(self, value: Any) -> Any:
        """Replace ``"@ARM"`` strings (anywhere in a config) by that arm's output in this seed."""
        if isinstance(value, dict):
            return {k: self._resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve(v) for v in value]
        if isinstance(value, str) and (m := _REF.fullmatch(value)):
            arm = m.group(1)
            if arm not in self.outputs:
                raise ConfigError(f"study {self.study.name}: @{arm} is used before arm {arm!r} has run")
            return self.outputs[arm]
        return value

    def run(self) -> Path:
        from sftrl.config import write_resolved_config

        self.dir.mkdir(parents=True, exist_ok=True)
        write_resolved_config(self.study, self.dir, "study.yaml")
        self._prepare_models()
        for seed in range(self.study.seeds):
            self.seed, self.outputs = seed, {}
            for arm in self.study.arms:
                self._run_arm(arm, self.seed_dir(seed) / arm.name)
        return self.dir

    def _prepare_models(self) -> None:
        """Catalogue models the study starts from are made here first when missing (gp-base: a copy
        of the shipped one, seconds)."""
        from deploy.gp_base import outdated_copy
        from sftrl.models import find_prepared, prepare_model
        from sftrl.models.store import CATALOG

        named = [self.study.base.get("model")] + [
            a.config.get("model") for a in self.study.arms if a.kind == "train"
        ]
        for name in dict.fromkeys(n for n in named if isinstance(n, str) and n in CATALOG):
            found = find_prepared(name)
            if found is None:
                self.console.print(f"preparing model {name} (sftrl models prepare {name})", highlight=False)
                prepare_model(name)
            elif outdated_copy(name, found.record):
                self.console.print(
                    f"replacing model {name}: a copy of the base an earlier sftrl shipped", highlight=False
                )
                prepare_model(name, force=True)

    def _run_arm(self, arm: StudyArm, arm_dir: Path) -> None:
        done = arm_dir / DONE
        if done.exists():
            self.outputs[arm.name] = json.loads(done.read_text())["output"]
            self.console.print(f"[dim]seed {self.seed}, {arm.name}: done earlier[/]")
            return
        self.console.rule(
            f"{self.study.name} ({self.study.size}), seed {self.seed}: arm {arm.name} ({arm.kind})"
        )
        started = time.perf_counter()
        self.done_extra = {}
        output = getattr(self, f"_run_{arm.kind}")(arm, arm_dir)
        self.outputs[arm.name] = output
        if self.study.levels is not None and arm.kind == "train":
            self._levels_report(arm_dir, output)
        # wall time of the attempt that finished the arm (one resumed after a stop: its last attempt)
        seconds = round(time.perf_counter() - started, 1)
        done.write_text(json.dumps({"output": output, "seconds": seconds, **self.done_extra}))

    def _seeded(self, config: Any) -> Any:
        """The arm's config for this seed: training seeds moved by it, evaluation tasks untouched."""
        if self.seed == 0:
            return config
        if hasattr(config, "rollout"):  # a training arm
            sampling = config.rollout.sampling.model_copy(
                update={"seed": (config.rollout.sampling.seed or 0) + self.seed}
            )
            rollout = config.rollout.model_copy(update={"sampling": sampling})
            return config.model_copy(update={"seed": config.seed + self.seed, "rollout": rollout})
        if "seed" in type(config).model_fields:  # data mixing: other tasks
            return config.model_copy(update={"seed": config.seed + 1_000_000 * self.seed})
        return config

    def _run_train(self, arm: StudyArm, arm_dir: Path) -> str:
        from deploy.study_reuse import start_played_in
        from deploy.train import Trainer

        config = self._seeded(arm_config(self.study, arm, self._resolve)).model_copy(
            update={"output_dir": str(arm_dir.parent), "run_name": arm.name}
        )
        by_parent = self._evaluated_by_parent(arm, config)  # its start is the parent's final evaluation
        by_seed_0 = not by_parent and bool(
            self.seed
            and not _REF.fullmatch(str(arm.config.get("model", "")))
            and start_played_in(self.seed_dir(0) / arm.name, config.eval)
        )  # the same model as seed 0's arm (not another arm's output), evaluated the same way
        if by_parent or by_seed_0:
            config = config.model_copy(update={"eval": config.eval.model_copy(update={"at_start": False})})
        if by_seed_0:
            self.done_extra["start_evaluation"] = "seed-0"
        # an arm stopped mid-way continues from its last checkpoint
        trainer = Trainer(config, resume=arm_dir.exists(), console=self.console)
        trainer.run()
        return str(trainer.last_checkpoint)

    def _train_parent(self, value: Any) -> tuple[str, Any] | None:
        """``"@ARM"`` naming a training arm of this study: its name and config, else None."""
        ref = _REF.fullmatch(str(value))
        parent = next((a for a in self.study.arms if ref and a.name == ref.group(1)), None)
        if parent is None or parent.kind != "train":
            return None
        return parent.name, arm_config(self.study, parent, self._resolve)

    def _evaluated_by_parent(self, arm: StudyArm, own: Any) -> bool:
        """Whether ``arm`` starts from a training arm's final checkpoint that was evaluated the same
        way (reports draw that evaluation as the arm's start)."""
        from deploy.study_reuse import evaluated_alike

        found = self._train_parent(arm.config.get("model", ""))
        if found is None:
            return False
        theirs = found[1]
        return evaluated_alike(theirs, own.eval, own.env, own.rollout.engine.dtype) and all(
            getattr(theirs.eval, k) == getattr(own.eval, k) for k in ("pass_k", "pass_k_temperature")
        )

    def _run_data_mix(self, arm: StudyArm, arm_dir: Path) -> str:
        from deploy.data_mixing import mix_datasets

        arm_dir.mkdir(parents=True, exist_ok=True)
        config = self._seeded(arm_config(self.study, arm, self._resolve)).model_copy(
            update={"out": str(arm_dir / "mixed.jsonl")}
        )
        counts = mix_datasets(config, on_progress=lambda text: self.console.print(text, highlight=False))
        (arm_dir / "counts.json").write_text(json.dumps(counts, indent=1))
        return counts["path"]

    def _run_merge_sweep(self, arm: StudyArm, arm_dir: Path) -> str:
        from deploy.merge_sweep import run_sweep

        config = arm_config(self.study, arm, self._resolve)
        run_sweep(config, arm_dir, known=self._sweep_end_points(arm, config))
        return str(arm_dir / "sweep.json")

    def _sweep_end_points(self, arm: StudyArm, config: Any) -> dict[float, dict[str, Any]]:
        """A linear sweep's ratio 0 and 1 are its two models unchanged: where a model is a training
        arm's final checkpoint evaluated the same way, that evaluation is the row (not played again)."""
        from deploy.study_reuse import evaluated_alike, final_evaluation

        known: dict[float, dict[str, Any]] = {}
        if config.method != "linear":  # SLERP's end points are not bitwise its models
            return known
        for ratio, ref in zip((0.0, 1.0), arm.config.get("models", []), strict=False):
            found = self._train_parent(ref)
            if ratio not in config.ratios or found is None:
                continue
            if not evaluated_alike(found[1], config, config.env, config.engine.dtype):
                continue
            metrics = final_evaluation(
                self.seed_dir(self.seed) / found[0], self.outputs[found[0]], list(config.suites)
            )
            if metrics is not None:
                known[ratio] = {**metrics, "evaluated_by": found[0]}
        return known

    def _levels_report(self, arm_dir: Path, checkpoint: str) -> None:
        """Accuracy per level of the arm's final checkpoint on the study's tagged items."""
        from deploy.difficulty import accuracy_by_level, read_tagged
        from services.rollout.config import SamplingConfig

        tagged = read_tagged(self._tagged_items())
        spec = self.study.levels
        assert spec is not None
        sampling = SamplingConfig(temperature=0.0, max_tokens=spec.max_tokens, seed=spec.seed)
        rollout = self._rollout(checkpoint)
        try:
            metrics = accuracy_by_level(rollout, tagged, sampling)
        finally:
            rollout.shutdown()
        (arm_dir / "levels.json").write_text(json.dumps(metrics, indent=1))

    def _tagged_items(self) -> Path:
        from deploy.difficulty import tag_items, write_tagged
        from services.envs import resolve_options
        from services.rollout.config import SamplingConfig

        path = self.seed_dir(self.seed) / "levels.jsonl"
        if path.exists():
            return path
        spec = self.study.levels
        assert spec is not None
        env = self.study.base.get("env", {})
        suites = (self.study.base.get("eval") or {}).get("suites") or {"id": {}}
        env_id = env.get("id", "sftrl/GeneralPoints-v0")
        options = resolve_options(env_id, {**env.get("options", {}), **suites.get(spec.suite, {})})
        rollout = self._rollout(self._resolve(spec.model))
        try:
            sampling = SamplingConfig(temperature=1.0, max_tokens=spec.max_tokens, seed=spec.seed)
            tagged = tag_items(rollout, env_id, options, spec.items, spec.samples, spec.seed, sampling)
        finally:
            rollout.shutdown()
        return write_tagged(tagged, path)

    def _rollout(self, model: str) -> RolloutWorker:
        from services.rollout.config import EngineConfig
        from services.rollout.worker import RolloutWorker

        engine = EngineConfig.model_validate((self.study.base.get("rollout") or {}).get("engine") or {})
        return RolloutWorker.on_model(model, engine)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
