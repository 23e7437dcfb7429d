"""The training loop behind `sftrl train`: stages of SFT and RL over Ray, evaluated and checkpointed.

Each stage gets a fresh learner group (fresh optimizer and schedule, as in paper 1 where PPO starts
from the SFT checkpoint), initialised from the previous stage's last checkpoint. One rollout group
lives for the whole run and receives the learner's weights in place. Everything that decides what
happens at step s (data order, task seeds, sampling seeds) is a function of (config, stage, s), so
a resumed run replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deploy.evaluate.suites import evaluate, suite_metrics
from deploy.train.combination import sft_weight, split_by_pass_rate
from deploy.train.config import RLStage, SFTStage, TrainConfig, resolve_hardware
from deploy.train.data import TrainingData, epoch_order, rows_for_step
from deploy.train.folder_lock import RunFolderLock
from deploy.train.kl_probe import KLProbe, open_probe
from deploy.train.metrics import MetricsLog, plot_run
from deploy.train.registry_sync import RunRegistrar
from deploy.train.resume import claim_run_folder
from deploy.train.rl_step import FlopsCounter, RLStep, push_dtype, push_weights
from services.envs import resolve_options
from services.rollout.group import RolloutGroup, episode_specs
from sftrl.checkpoint import step_of
from sftrl.config import write_resolved_config
from sftrl.models import resolve_model
from sftrl.registry import RunRecord, open_registry
from sftrl.registry.store import REGISTRY_ERRORS

if TYPE_CHECKING:
    from services.learner.group import LearnerGroup
    from services.learner.sft_data import SFTExample
    from services.rollout.env_pool import EpisodeSpec
    from sftrl.trajectory import Trajectory


def _stage_seed(config: TrainConfig, stage_index: int, step: int, tasks: int) -> int:
    """Training task seeds: disjoint per (stage, step), and below the evaluation seeds."""
    return config.seed * 1_000_000 + stage_index * 100_000 + step * tasks


class RunInterrupted(Exception):
    """The run stopped on SIGTERM after checkpointing its last step (resume with --resume auto)."""


class Trainer:
    def __init__(
        self, config: TrainConfig, resume: bool = False, console: Console | None = None, restart: bool = False
    ):
        """``resume``: continue the newest checkpoint that verifies (refused when none does, or when the
        config differs in what the checkpoints depend on); ``restart``: where the folder holds a run
        that is not continued, move it aside and start from step 0 (:mod:`deploy.train.resume`)."""
        self.config = config
        self.console = console or Console()
        self.run_dir = Path(config.output_dir) / config.run_name
        self.ckpt_root = self.run_dir / "checkpoints"
        self.folder_lock = RunFolderLock(self.run_dir)  # this run is the folder's one writer until close()
        try:
            self._claim(resume, restart)
        except BaseException:
            self.folder_lock.release()
            raise

    def _claim(self, resume: bool, restart: bool) -> None:
        """The folder made ready for this run (continued, started, or moved aside and started)."""
        config = self.config
        self.resume_state = self._load_state() if resume else None
        config.env.options = resolve_options(config.env.id, config.env.options)
        notes = resolve_hardware(
            config, self.console.print
        )  # before the comparison: the old config holds these
        # the folder is checked before anything in it is written: a refusal leaves it as it was
        keep_until = claim_run_folder(self.run_dir, config, self.resume_state, resume, restart, self.console)
        self._clean_checkpoint_leftovers()
        write_resolved_config(config, self.run_dir, notes=notes)
        # metrics written after the checkpoint are replayed, so they are dropped first
        self.metrics = MetricsLog(self.run_dir, config.tensorboard, truncate_after_step=keep_until)
        self.final_policy_version: list[int] | None = None  # per rollout actor, at the end of the run
        self.last_checkpoint: Path | None = None
        self.registrar: RunRegistrar | None = None
        self.eval_at_step: dict[int, dict[str, float]] = {}
        self.flops = float(self.resume_state["flops"]) if self.resume_state else 0.0
        self.global_step = int(self.resume_state["global_step"]) if self.resume_state else 0
        self.rollout: RolloutGroup | None = None
        self.learner: LearnerGroup | None = None
        self.kl: KLProbe | None = None  # KL to the start at each evaluation (deploy.train.kl_probe)
        self.counter = FlopsCounter(0)
        self.data = TrainingData(config, self.run_dir)
        self.stop_requested = False  # set by SIGTERM: stop after this step, checkpointed

    # -- state ------------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, Any] | None:
        from sftrl.checkpoint import CheckpointManager

        latest = CheckpointManager(self.ckpt_root, keep=self.config.checkpoint.keep).latest()
        if latest is None:
            return None
        state = json.loads((latest / "trainer_state.json").read_text()).get("extra", {})
        state["path"] = str(latest)
        return state

    def _clean_checkpoint_leftovers(self) -> None:
        """This run now holds the folder, as its one writer: temporary folders a crashed writer left
        go, whatever host or pid they name (a pid check is wrong across nodes and with pid reuse)."""
        from sftrl.checkpoint import CheckpointManager

        removed = CheckpointManager(self.ckpt_root, keep=self.config.checkpoint.keep).repair()
        if removed:
            names = ", ".join(p.name for p in removed)
            self.console.print(
                f"[dim]removed what an earlier writer left unfinished: {names}[/]", highlight=False
            )

    def _save(self, stage_index: int, step: int, final: bool) -> Path:
        from sftrl.checkpoint import CheckpointManager

        extra = {"stage_index": stage_index, "stage_step": step, "global_step": self.global_step,
                 "flops": self.flops, "stage_final": final,
                 "stage_name": self.config.stages[stage_index].name}  # fmt: skip
        manager = CheckpointManager(self.ckpt_root, keep=self.config.checkpoint.keep)
        before = {folder for _, folder in manager.steps()}
        learner = self.learner
        assert learner is not None
        # the records that led to this checkpoint are on disk before it is: a resume keeps the records
        # up to its step, so a durable checkpoint ahead of them would lose them for good
        self.metrics.sync()
        path = Path(
            manager.save(self.global_step, lambda target: learner.save_checkpoint(str(target), extra))
        )
        removed = before - {folder for _, folder in manager.steps()}  # pruned by save()
        if self.registrar is not None:
            self.registrar.checkpoint(path, self.eval_at_step.get(self.global_step))
            for folder in removed:
                if (gone := step_of(folder)) is not None:
                    self.registrar.forget(gone)
        return path

    # -- helpers -------------------------------------------------------------------------------------

    def _push_weights(self) -> float:
        assert self.learner is not None and self.rollout is not None
        dtype = push_dtype(self.config.rollout.engine.dtype)
        return push_weights(self.learner, self.rollout, dtype, self.global_step)

    def _evaluate(self, stage: str, stage_step: int, between: bool = False) -> dict[str, float]:
        """Evaluate the current weights; ``between``: an evaluation inside a stage, which leaves out
        the suites ``eval.final_only`` keeps for the start and the ends of stages."""
        ev = self.config.eval
        t0 = time.perf_counter()
        suites = {k: v for k, v in ev.suites.items() if not (between and k in ev.final_only)}
        metrics, played = evaluate(self.rollout, self.config.env.id, self.config.env.options, suites, ev.episodes,
                                   ev.seed, ev.sampling, ev.pass_k, ev.pass_k_temperature)  # fmt: skip
        at = {"stage": stage, "stage_step": stage_step, "global_step": self.global_step}
        if self.kl is not None and self.learner is not None:
            metrics |= self.kl.measure(self.learner)
        self.metrics.log_evaluation(
            at | {"flops": self.flops, "eval_s": time.perf_counter() - t0}, metrics, played
        )
        self.eval_at_step[self.global_step] = metrics
        shown = "  ".join(
            f"{k.removeprefix('success/')} {v:.1%}" for k, v in metrics.items() if k.startswith("success/")
        )
        self.console.print(f"[bold]eval[/] {stage} step {stage_step}: success {shown}", highlight=False)
        return metrics

    def _new_learner(self, stage: SFTStage | RLStage, model_path: str) -> None:
        from services.learner.group import LearnerGroup

        rl = stage.rl if isinstance(stage, RLStage) else None
        optim = stage.optim.model_copy(update={"total_steps": stage.steps})
        cfg = self.config.learner.model_copy(
            update={"model": model_path, "optim": optim, "seed": self.config.seed}
        )
        value_head = rl is not None and rl.algorithm in ("ppo", "ppo_token")  # both use GAE: a critic
        reference = rl is not None and rl.kl_coef > 0
        self.learner = LearnerGroup(cfg, rl=rl, value_head=value_head, reference=reference)
        self.counter = FlopsCounter(int(self.learner.flops_per_token() / 6))

    # -- stages ----------------------------------------------------------------------------------------

    def _run_sft(self, stage: SFTStage, stage_index: int, start: int, progress: Progress) -> None:
        assert self.learner is not None
        examples = self.data.sft_examples(stage.data, stage.name, stage.max_len, progress)
        order = epoch_order(
            len(examples), stage.steps, stage.batch_size, self.config.seed + 7919 * stage_index
        )
        bar = progress.add_task(stage.name, total=stage.steps, completed=start)
        for step in range(start, stage.steps):
            rows = [examples[i] for i in order[step * stage.batch_size : (step + 1) * stage.batch_size]]
            t0 = time.perf_counter()
            m = self.learner.sft_step(rows, lr_step=step)
            tokens = sum(len(r.input_ids) for r in rows)
            self.flops += self.counter.sft(tokens)
            self.global_step += 1
            self.metrics.log({"kind": "train", "stage": stage.name, "stage_step": step + 1,
                              "global_step": self.global_step, "flops": self.flops,
                              "learn_s": time.perf_counter() - t0, **m})  # fmt: skip
            progress.update(
                bar, advance=1, description=f"{stage.name} loss {m.get('loss', float('nan')):.3f}"
            )
            self._after_step(stage, stage_index, step + 1)

    def _rl_specs(self, stage: RLStage, stage_index: int, step: int) -> list[EpisodeSpec]:
        env = stage.env or self.config.env
        options = resolve_options(env.id, env.options)
        seed = _stage_seed(self.config, stage_index, step, stage.tasks_per_step)
        specs = episode_specs(
            env.id, options, stage.tasks_per_step, seed=seed, samples_per_task=stage.samples_per_task
        )
        return [type(s)(f"{stage.name}-{step}-{s.episode_id}", s.env_id, s.env_options, s.seed, f"{step}-{s.group_id}")
                for s in specs]  # fmt: skip

    def _run_rl(self, stage: RLStage, stage_index: int, start: int, progress: Progress) -> None:
        assert self.rollout is not None and self.learner is not None
        tokenizer = _tokenizer(resolve_model(self.config.model))
        rl_step = RLStep(self.rollout, self.learner, stage.rl, tokenizer, stage.max_len,
                         push_dtype(self.config.rollout.engine.dtype), self.counter)  # fmt: skip
        sampling = self.config.rollout.sampling
        bar = progress.add_task(stage.name, total=stage.steps, completed=start)
        mix_pool = None
        if stage.mix is not None and stage.mix.strategy == "progressive":
            mix_pool = self.data.sft_examples(
                stage.mix.data, f"{stage.name}-mix", stage.mix.max_len, progress
            )
        pool = ThreadPoolExecutor(max_workers=1) if self.config.off_policy else None
        pending: Future[list[Trajectory]] | None = None
        for step in range(start, stage.steps):
            t0 = time.perf_counter()
            if pending is not None:
                trajs = pending.result()
            else:
                trajs = rl_step.play(self._rl_specs(stage, stage_index, step), sampling)
            rollout_s = time.perf_counter() - t0
            if pool is not None and step + 1 < stage.steps:  # the next batch plays while the learner trains
                pending = pool.submit(rl_step.play, self._rl_specs(stage, stage_index, step + 1), sampling)
            if self.config.save_trajectories:
                from sftrl.trajectory import write_trajectories

                write_trajectories(
                    trajs, self.run_dir / "trajectories" / f"{stage.name}-step-{step + 1:06d}.jsonl"
                )
            t1 = time.perf_counter()
            m = self._learn(rl_step, stage, stage_index, step, trajs, mix_pool)
            learn_s = time.perf_counter() - t1
            self.global_step += 1
            push_s = rl_step.push(self.global_step)
            stats = suite_metrics(trajs)
            staleness = [self.global_step - 1 - v for t in trajs for v in t.policy_versions]
            self.metrics.log({
                "kind": "train", "stage": stage.name, "stage_step": step + 1, "global_step": self.global_step,
                "flops": self.flops, "mean_reward": stats["reward"], "success": stats["success"],
                "response_tokens": stats["response_tokens"], "turns": stats["turns"],
                "gen_tokens_per_s": sum(t.num_generated_tokens for t in trajs) / max(rollout_s, 1e-9),
                "rollout_s": rollout_s, "learn_s": learn_s, "push_s": push_s,
                "staleness_max": max(staleness, default=0), **m,
            })  # fmt: skip
            progress.update(bar, advance=1, description=f"{stage.name} reward {stats['reward']:+.2f}")
            self._after_step(stage, stage_index, step + 1)
        if pool is not None:
            pool.shutdown(wait=True)

    def _learn(
        self, rl_step: RLStep, stage: RLStage, stage_index: int, step: int, trajs: list[Trajectory],
        mix_pool: list[SFTExample] | None,
    ) -> dict[str, float]:  # fmt: skip
        """The step's update(s): the RL step, with the stage's SFT combination if it has one; counts
        the training FLOPs; returns the step's learner metrics."""
        assert self.learner is not None
        mix, m, rl_trajs = stage.mix, {}, trajs
        if mix is not None and mix.strategy == "interleaved":
            failed, rl_trajs = split_by_pass_rate(trajs)
            m.update(sft_tasks=len(failed), rl_tasks=len({t.group_id for t in rl_trajs}),
                     sft_task_seeds=sorted(t.seed for t in failed))  # fmt: skip
            if failed:
                rows = self.data.task_demonstrations(failed, f"{stage.name}-step-{step + 1:06d}", mix.max_len)
                if rows:
                    sft = self.learner.sft_step(rows, lr_step=step)  # the RL update's rate too
                    m.update(sft_loss=sft["loss"], sft_tokens=sft["tokens"])
                    self.flops += self.counter.sft(sft["tokens"])
        if len({t.group_id for t in rl_trajs}) < self.config.learner.world_size:
            self.flops += self.counter.generation(sum(len(t.flatten()[0]) for t in trajs))
            return m | {"rl_skipped": 1.0}  # too few tasks left for an RL step on every rank
        rows, weight = None, 0.0
        if mix_pool is not None and mix is not None:
            rows = rows_for_step(mix_pool, mix.rows_per_step, self.config.seed + 7919 * stage_index, step)
            weight = sft_weight(mix, step, stage.steps)
        outcome = rl_step.learn(rl_trajs, lr_step=step, sft=rows, sft_weight=weight, generated_by=trajs)
        self.flops += outcome.flops
        return m | outcome.metrics

    def _after_step(self, stage: SFTStage | RLStage, stage_index: int, step: int) -> None:
        last = step == stage.steps
        if step % self.config.eval.every == 0 or last:
            if isinstance(stage, SFTStage):
                self._push_weights()
            self._evaluate(stage.name, step, between=not last)
        if step % self.config.checkpoint.every == 0 or last:
            self.last_checkpoint = self._save(stage_index, step, last)
        elif self.stop_requested:
            self.last_checkpoint = self._save(stage_index, step, False)
        if self.stop_requested:
            raise RunInterrupted(
                f"stopped by SIGTERM after step {self.global_step}; checkpoint {self.last_checkpoint} "
                "(continue with --resume auto)"
            )

    # -- run ---------------------------------------------------------------------------------------------

    def run(self, on_trained: Callable[[RolloutGroup], None] | None = None) -> Path:
        """Train every stage; ``on_trained(rollout)``, if given, is called at the end with the run's
        rollout group holding the final weights (more evaluation without another engine start)."""
        from sftrl.ray_setup import init_ray

        with contextlib.ExitStack() as stack:
            stack.callback(self.close)
            self.registrar = self._open_registrar(stack)
            status = "failed"
            try:
                init_ray(self.config.ray_address)  # first: ray.init installs a SIGTERM handler of its own
                with self._stop_on_sigterm():
                    result = self._run(on_trained)
                status = "finished"
                return result
            except (KeyboardInterrupt, RunInterrupted):
                status = "interrupted"
                raise
            finally:
                if self.registrar is not None:
                    self.registrar.finish(status)

    def close(self) -> None:
        """Give the run folder up to another writer (``run`` does this when it ends)."""
        self.folder_lock.release()

    @contextlib.contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """While the run lasts, SIGTERM (a pod or job being stopped) asks it to finish the step it is in,
        write a checkpoint and stop with the status "interrupted"."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True
            self.console.print("[yellow]SIGTERM: stopping after this step, with a checkpoint[/]")

        previous = signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _open_registrar(self, stack: contextlib.ExitStack) -> RunRegistrar | None:
        """The run's registry writer; a registry that cannot be had is a warning, never a failed run."""
        cfg = self.config
        if not cfg.registry.enabled:
            return None
        run = RunRecord(run_id=cfg.run_name, run_dir=str(self.run_dir.resolve()), model=cfg.model,
                        config=cfg.model_dump(mode="json"))  # fmt: skip
        try:
            registry = stack.enter_context(open_registry(cfg.registry.url))
        except (RuntimeError, *REGISTRY_ERRORS) as exc:
            self.console.print(f"[yellow]registry unavailable ({exc}); run `sftrl registry resync` later[/]")
            return None
        return RunRegistrar(registry, run, self.console)

    def _run(self, on_trained: Callable[[RolloutGroup], None] | None) -> Path:
        from services.rollout.config import RolloutConfig
        from sftrl.ray_setup import init_ray

        cfg = self.config
        init_ray(cfg.ray_address)
        model_path = resolve_model(cfg.model)
        start_stage, start_step = 0, 0
        if self.resume_state:
            s = self.resume_state
            start_stage, start_step = s["stage_index"], s["stage_step"]
            if s.get("stage_final"):
                start_stage, start_step = start_stage + 1, 0
            model_path = s["path"]
            self.last_checkpoint = Path(s["path"])  # the output, should every stage be done already
            self.console.print(f"resuming from {s['path']} (stage {start_stage}, step {start_step})")
        rollout_cfg: RolloutConfig = cfg.rollout.model_copy(deep=True)
        # the engines start from the base model and receive the checkpoint's weights by a push: a
        # resumed run's checkpoint folder may be pruned later, and a replaced actor reloads its model
        rollout_cfg.engine.model = resolve_model(cfg.model)
        # an evaluation plays its suites in one call: one chunk per actor
        chunk = cfg.eval.episodes * max(1, len(cfg.eval.suites)) // rollout_cfg.num_actors
        # the engines build while the first learner starts: its first use waits for them
        self.rollout = RolloutGroup(rollout_cfg, chunk_size=max(1, chunk), wait=False)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=self.console) as progress:
                for index in range(start_stage, len(cfg.stages)):
                    stage = cfg.stages[index]
                    resuming_here = self.resume_state is not None and index == start_stage and start_step > 0
                    self._new_learner(stage, model_path)
                    if resuming_here:
                        self.learner.load_checkpoint(self.resume_state["path"])
                    if self.resume_state is not None and index == start_stage:
                        self._push_weights()  # the engine must hold the checkpoint's weights
                    if index == start_stage:  # fresh: engines and learner hold the starting weights
                        self.kl = open_probe(self.run_dir, cfg, self.rollout, self.learner,
                                             fresh=self.resume_state is None, say=self.console.print)  # fmt: skip
                    self.metrics.log(
                        {"kind": "stage_start", "stage": stage.name, "global_step": self.global_step}
                    )
                    # a later stage starts from weights its previous stage evaluated at its last step
                    if not resuming_here and index == 0 and cfg.eval.at_start:
                        self._evaluate(stage.name, 0)
                    step0 = start_step if resuming_here else 0
                    if isinstance(stage, SFTStage):
                        self._run_sft(stage, index, step0, progress)
                    else:
                        self._run_rl(stage, index, step0, progress)
                    model_path = str(self.last_checkpoint)
                    self.learner.shutdown()
                    self.learner = None
            if on_trained is not None:
                if start_stage == len(cfg.stages):  # resumed after the last stage: nothing was pushed
                    self.rollout.update_weights(str(self.last_checkpoint), version=self.global_step)
                on_trained(self.rollout)
            self.final_policy_version = self.rollout.policy_versions()
        finally:
            if self.learner is not None:
                self.learner.shutdown()
            self.rollout.shutdown()
            self.metrics.close()
        plot = plot_run(self.run_dir)
        return plot or self.run_dir


def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)
