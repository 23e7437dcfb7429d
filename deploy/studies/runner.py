"""Studies: a recipe (:mod:`deploy.studies.recipe`) run as a sequence of seeded arms.

A study runs ``seeds`` replicates of its arms (``--seeds N``): seed k moves the training seeds (data
order, demonstrations, sampling, RL tasks; so the initial SFT too), never the evaluation tasks. Each arm
writes into ``<out>/<study>-<size>/seed-<k>/<arm>/`` and a ``DONE`` marker when it finished, so a study
that was stopped continues with the first unfinished arm, and one run again with more seeds only runs
the new ones. A value ``"@ARM"`` in an arm's config is replaced by that arm's output in the same seed.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from deploy.studies.pick import Candidate
from deploy.studies.provenance import record_models
from deploy.studies.recipe import ARM_REF, Study, StudyArm, arm_config
from sftrl.config import ConfigError, write_resolved_config
from sftrl.files import write_atomic

if TYPE_CHECKING:
    from services.rollout.protocol import Rollout
    from services.rollout.worker import RolloutWorker

DONE = "DONE"


class StudyRunner:
    """Runs a :class:`Study`'s arms, seed after seed, into ``<out_root>/<name>-<size>/``; an arm with
    a ``DONE`` marker is skipped (its output taken from the marker)."""

    def __init__(
        self, study: Study, out_root: str | Path = "runs/studies", console: Console | None = None,
        skip: frozenset[str] = frozenset(),
    ) -> None:  # fmt: skip
        self.study = study
        self.skip = skip  # arms this run leaves out (checked by recipe.arms_left_out)
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
        if isinstance(value, str) and (m := ARM_REF.fullmatch(value)):
            arm = m.group(1)
            if arm not in self.outputs:
                raise ConfigError(f"study {self.study.name}: @{arm} is used before arm {arm!r} has run")
            return self.outputs[arm]
        return value

    def run(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_resolved_config(self.study, self.dir, "study.yaml")
        self._prepare_models()
        for seed in range(self.study.seeds):
            self.seed, self.outputs = seed, {}
            for arm in self.study.arms:
                if arm.name in self.skip and not (self.seed_dir(seed) / arm.name / DONE).exists():
                    self.console.print(f"[dim]seed {seed}, {arm.name}: left out (--skip)[/]")
                    continue
                self._run_arm(arm, self.seed_dir(seed) / arm.name)
        return self.dir

    def _prepare_models(self) -> None:
        """Catalogue models the study starts from are made here first when missing (gp-base: a copy
        of the shipped one, seconds)."""
        from deploy.models.scratch import current_model
        from sftrl.models.store import CATALOG

        named = [self.study.base.get("model")] + [
            a.config.get("model") for a in self.study.arms if a.kind == "train"
        ]
        say = partial(self.console.print, highlight=False)
        records = {
            name: current_model(name, say).record
            for name in dict.fromkeys(n for n in named if isinstance(n, str) and n in CATALOG)
        }
        record_models(self.dir, records)

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
        # wall time of the attempt that finished the arm (one resumed after a stop: its last attempt)
        seconds = round(time.perf_counter() - started, 1)
        write_atomic(done, json.dumps({"output": output, "seconds": seconds, **self.done_extra}))

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
        from deploy.train.loop import Trainer

        config = self._seeded(arm_config(self.study, arm, self._resolve)).model_copy(
            update={"output_dir": str(arm_dir.parent), "run_name": arm.name}
        )
        by_parent = self._evaluated_by_parent(arm, config)  # its start is the parent's final evaluation
        played_by = None if by_parent else self._start_played_by(arm, config)
        if by_parent or played_by:
            config = config.model_copy(update={"eval": config.eval.model_copy(update={"at_start": False})})
        if played_by:
            self.done_extra["start_evaluation"] = "seed-0" if played_by == arm.name else f"seed-0/{played_by}"
        root = self._root_arm(arm)
        if root != arm.name and config.eval.kl_samples and "base" not in config.eval.kl_references:
            # the arm it descends from started at the study's base: its start samples give KL to the base
            refs = {**config.eval.kl_references, "base": str(arm_dir.parent / root)}
            config = config.model_copy(
                update={"eval": config.eval.model_copy(update={"kl_references": refs})}
            )
        # an arm stopped mid-way continues from its last checkpoint; one stopped before any checkpoint
        # verified starts over, its old folder moved aside (a study run again must go on, losing nothing)
        trainer = Trainer(config, resume=arm_dir.exists(), console=self.console, restart=True)
        # levels are played by the arm's own engines, its final weights in them
        levels = None if self.study.levels is None else partial(self._levels_report, arm, arm_dir)
        trainer.run(on_trained=levels)
        return str(trainer.last_checkpoint)

    def _start_played_by(self, arm: StudyArm, own: Any) -> str | None:
        """The seed-0 arm that already evaluated this arm's starting model as ``own`` would (this arm
        itself in a later seed, else another arm from the same model): seeds never change the
        evaluation, so its numbers would repeat. None for an arm that starts from another arm's output."""
        from deploy.studies.reuse import start_played_in, trained_alike

        if ARM_REF.fullmatch(str(arm.config.get("model", ""))):
            return None
        others = [a for a in self.study.arms if a.name != arm.name]
        if self.seed == 0:  # only the arms run before it
            others = others[: self.study.arms.index(arm)]
        for other in ([arm] if self.seed else []) + others:
            if other.kind != "train" or ARM_REF.fullmatch(str(other.config.get("model", ""))):
                continue
            theirs = arm_config(self.study, other, self._resolve)
            alike = theirs.model == own.model and trained_alike(theirs, own)
            if alike and start_played_in(self.seed_dir(0) / other.name, own.eval):
                return other.name
        return None

    def _root_arm(self, arm: StudyArm) -> str:
        """The training arm ``arm`` descends from through ``"@ARM"`` models (itself when it starts
        from a model of its own)."""
        seen = {arm.name}
        while (found := self._train_parent(arm.config.get("model", ""))) is not None and found[0] not in seen:
            seen.add(found[0])
            arm = next(a for a in self.study.arms if a.name == found[0])
        return arm.name

    def _train_parent(self, value: Any) -> tuple[str, Any] | None:
        """``"@ARM"`` naming a training arm of this study: its name and config, else None."""
        ref = ARM_REF.fullmatch(str(value))
        parent = next((a for a in self.study.arms if ref and a.name == ref.group(1)), None)
        if parent is None or parent.kind != "train":
            return None
        return parent.name, arm_config(self.study, parent, self._resolve)

    def _evaluated_by_parent(self, arm: StudyArm, own: Any) -> bool:
        """Whether ``arm`` starts from a training arm's final checkpoint that was evaluated the same
        way (reports draw that evaluation as the arm's start)."""
        from deploy.studies.reuse import trained_alike

        found = self._train_parent(arm.config.get("model", ""))
        return found is not None and trained_alike(found[1], own)

    def _run_data_mix(self, arm: StudyArm, arm_dir: Path) -> str:
        from deploy.studies.data_mixing import mix_datasets

        arm_dir.mkdir(parents=True, exist_ok=True)
        config = self._seeded(arm_config(self.study, arm, self._resolve)).model_copy(
            update={"out": str(arm_dir / "mixed.jsonl")}
        )
        write_resolved_config(config, arm_dir)
        counts = mix_datasets(config, on_progress=lambda text: self.console.print(text, highlight=False))
        write_atomic(arm_dir / "counts.json", json.dumps(counts, indent=1))
        return counts["path"]

    def _run_merge_sweep(self, arm: StudyArm, arm_dir: Path) -> str:
        from deploy.studies.merge_sweep import run_sweep

        config = arm_config(self.study, arm, self._resolve)
        run_sweep(config, arm_dir, known=self._sweep_end_points(arm, config))
        return str(arm_dir / "sweep.json")

    def _sweep_end_points(self, arm: StudyArm, config: Any) -> dict[float, dict[str, Any]]:
        """A sweep's ratio 0 and 1 are its two models, bitwise (tests/test_merge.py), except TIES below
        density 1 (it trims the task vectors): where a model is a training arm's final checkpoint
        evaluated the same way, that evaluation is the row (not played again)."""
        from deploy.studies.reuse import evaluated_alike, final_evaluation

        known: dict[float, dict[str, Any]] = {}
        if config.method == "ties" and config.density < 1:
            return known
        for ratio, ref in zip((0.0, 1.0), arm.config.get("models", []), strict=False):
            found = self._train_parent(ref)
            if ratio not in config.ratios or found is None:
                continue
            if not evaluated_alike(found[1], config, config.env, config.engine.dtype, some_suites=True):
                continue
            metrics = final_evaluation(
                self.seed_dir(self.seed) / found[0], self.outputs[found[0]], list(config.suites)
            )
            if metrics is not None:
                known[ratio] = {**metrics, "evaluated_by": found[0]}
        return known

    def _run_pick(self, arm: StudyArm, arm_dir: Path) -> str:
        """The best candidate of this seed by success on the choosing suite; its accuracy per level on
        the tagged items (a training arm's own levels are taken as played; a merge is made again)."""
        import shutil

        from deploy.studies.merge_sweep import MergeSweepConfig
        from deploy.studies.pick import PickConfig, best, sweep_candidates, write_picked
        from deploy.studies.reuse import final_evaluation
        from sftrl.models.merge import merge_models

        config = arm_config(self.study, arm, self._resolve)
        assert isinstance(config, PickConfig)
        arms = {a.name: a for a in self.study.arms}
        found, folder = [], self.seed_dir(self.seed)
        for name in config.among:
            if arms[name].kind == "merge_sweep":
                sweep = json.loads((folder / name / "sweep.json").read_text(encoding="utf-8"))
                found += sweep_candidates(name, sweep, config.suite, config.interior_only)
            else:
                metrics = final_evaluation(folder / name, self.outputs[name], [config.suite]) or {}
                if isinstance(metrics.get(f"success/{config.suite}"), int | float):
                    found.append(Candidate(name, None, float(metrics[f"success/{config.suite}"])))
        choice = best(found)
        arm_dir.mkdir(parents=True, exist_ok=True)
        write_picked(arm_dir, choice, found, config.suite)
        self.console.print(f"picked {choice.describe()} (success/{config.suite} {choice.value:.1%})")
        played = folder / choice.arm / "levels.json"
        if choice.ratio is None:
            model = self.outputs[choice.arm]
        else:
            sweep_config = arm_config(self.study, arms[choice.arm], self._resolve)
            assert isinstance(sweep_config, MergeSweepConfig)
            model = str(
                merge_models(sweep_config.merge_spec(choice.ratio), arm_dir / "model", overwrite=True)
            )
        if self.study.levels is not None and choice.ratio is None and played.exists():
            shutil.copyfile(played, arm_dir / "levels.json")  # the same weights, played the same way
        elif self.study.levels is not None:
            rollout = self._rollout(model)
            try:
                self._levels_report(arm, arm_dir, rollout, played_as=arms[choice.arm])
            finally:
                rollout.shutdown()
        return model

    def _levels_report(
        self, arm: StudyArm, arm_dir: Path, rollout: Rollout, played_as: StudyArm | None = None
    ) -> None:
        """Accuracy per level of the arm's final weights (held by ``rollout``) on the study's tagged items,
        asked as ``played_as`` (default: the arm itself) asks its own episodes: its ``levels.arm_options``
        (e.g. reasoning) over the items' and its evaluation's answer length."""
        from deploy.evaluate.levels import accuracy_by_level, read_tagged
        from services.rollout.config import SamplingConfig

        spec = self.study.levels
        assert spec is not None
        own = arm_config(self.study, played_as or arm, self._resolve)
        options = {k: v for k, v in own.env.options.items() if k in spec.arm_options}
        max_tokens = own.eval.sampling.max_tokens if hasattr(own, "eval") else own.sampling.max_tokens
        tagged = read_tagged(self._tagged_items(arm, rollout))
        sampling = SamplingConfig(temperature=0.0, max_tokens=max_tokens or spec.max_tokens, seed=spec.seed)
        metrics = accuracy_by_level(rollout, tagged, sampling, options=options)
        write_atomic(arm_dir / "levels.json", json.dumps(metrics, indent=1))

    def _tagged_items(self, arm: StudyArm, rollout: Rollout) -> Path:
        """This seed's tagged items; tagged now if missing, by ``rollout`` when ``arm`` is the model
        that defines the levels, else by an engine of its own on that model."""
        from deploy.evaluate.levels import LEVEL_SPEC_FILE, tag_items, write_tagged
        from services.envs import resolve_options
        from services.rollout.config import SamplingConfig

        path = self.seed_dir(self.seed) / "levels.jsonl"
        spec = self.study.levels
        assert spec is not None
        made_by = path.with_name(LEVEL_SPEC_FILE)  # the settings the items were tagged with
        wanted = spec.model_dump(mode="json", exclude={"arm_options", "max_tokens"})
        if path.exists():
            found = json.loads(made_by.read_text()) if made_by.exists() else None
            if found != wanted:
                raise ConfigError(
                    f"the tagged items in {path} were made with other level settings ({found or 'unrecorded'}) "
                    f"than this recipe's ({wanted}): give the study another --output-dir, or move that folder"
                )
            return path
        env = self.study.base.get("env", {})
        suites = (self.study.base.get("eval") or {}).get("suites") or {"id": {}}
        env_id = env.get("id", "sftrl/GeneralPoints-v0")
        options = {**env.get("options", {}), **suites.get(spec.suite, {}), **spec.options}
        options = resolve_options(env_id, options)
        sampling = SamplingConfig(temperature=1.0, max_tokens=spec.max_tokens, seed=spec.seed)
        own = spec.model == f"@{arm.name}"
        tagger = rollout if own else self._rollout(self._resolve(spec.model))
        try:
            if spec.per_level is None:
                tagged = tag_items(tagger, env_id, options, spec.items, spec.samples, spec.seed, sampling)
            else:
                tagged = self._fill_levels(tagger, env_id, options, sampling, path.parent)
        finally:
            if not own:
                tagger.shutdown()
        write_atomic(made_by, json.dumps(wanted))
        return write_tagged(tagged, path)

    def _fill_levels(self, tagger: Rollout, env_id: str, options: dict[str, Any], sampling: Any,
                     seed_dir: Path) -> list[Any]:  # fmt: skip
        """Items drawn until every level holds ``per_level``; what it took goes to levels-fill.json."""
        from deploy.evaluate.levels import LEVEL_FILL_FILE, fill_levels, write_fill

        spec = self.study.levels
        assert spec is not None and spec.per_level is not None

        def progress(drawn: int, counts: dict[str, int]) -> None:
            shown = " ".join(f"{k} {v}" for k, v in counts.items())
            self.console.print(f"levels: {drawn} items tagged ({shown}; {spec.per_level} asked of each)")

        tagged, fill = fill_levels(tagger, env_id, options, spec.per_level, spec.samples, spec.seed, sampling,
                                   spec.batch, spec.max_items, on_progress=progress)  # fmt: skip
        write_fill(fill, seed_dir / LEVEL_FILL_FILE)
        if fill.short:
            self.console.print(f"[yellow]levels: {fill.shortfall()}[/]", highlight=False)
        return tagged

    def _rollout(self, model: str) -> RolloutWorker:
        from services.rollout.config import EngineConfig
        from services.rollout.worker import RolloutWorker

        engine = EngineConfig.model_validate((self.study.base.get("rollout") or {}).get("engine") or {})
        return RolloutWorker.on_model(model, engine)
