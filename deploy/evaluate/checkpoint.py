"""Evaluate a registered checkpoint on a suite: the one code path of `sftrl evaluate` (in process) and of
the Serve endpoint's replicas, so both give the same numbers for the same seed.

A suite is either a name defined by the checkpoint's run (``eval.suites``: ``id``, ``ood_rule``, ...),
applied on top of the run's environment, or an explicit environment id and options. A client of the
endpoint never names a file to open: options that name files (V-IRL ``routes``, VisualQA ``dataset``)
take only the name of a dataset the server offers (a file in its ``data_dir``), mapped to the file when
the evaluation runs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError

from deploy.evaluate.metrics import episode_outcomes, suite_metrics
from deploy.evaluate.suites import play_suite
from services.rollout.config import EngineConfig, RolloutConfig, SamplingConfig
from sftrl.config import ConfigError, StrictModel
from sftrl.registry.records import (
    MAX_OUTCOMES,
    CheckpointRecord,
    EpisodeOutcomes,
    EvaluationRecord,
    SuiteSpec,
    parse_checkpoint_ref,
)
from sftrl.registry.store import FINISHED, REGISTRY_ERRORS, Registry, RegistryError

if TYPE_CHECKING:
    from services.rollout.protocol import Rollout
    from services.rollout.worker import RolloutWorker

CHUNK_EPISODES = 16  # progress is reported per chunk; chunking never changes results (per-episode seeds)
LEASE_S = 60.0  # an evaluation nobody renews for this long is lost
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
log = logging.getLogger(__name__)


class EvalInputError(ValueError):
    """A request that names something that does not exist or cannot be played (a 4xx, not a 500)."""


class UnknownCheckpoint(EvalInputError):
    """The checkpoint named by a request is not in the registry (a 404)."""


class EvalSampling(StrictModel):
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, le=4096)


# A request's bounds; a record read back from the registry is held to them again (:func:`check_counts`).
MAX_EPISODES = 100_000
MAX_SAMPLES = 64


class EvalRequest(StrictModel):
    checkpoint: str = Field(min_length=1, max_length=200, description="RUN@STEP, RUN@latest or RUN")
    suite: str | SuiteSpec = Field(description="a suite name of the checkpoint's run, or {env, options}")
    episodes: int = Field(32, ge=1, le=MAX_EPISODES)
    samples: int = Field(
        1, ge=1, le=MAX_SAMPLES, description="samples of each task; > 1 adds pass@k (needs temperature > 0)"
    )
    seed: int = Field(10_000, ge=0, le=2**31 - 1)
    sampling: EvalSampling | None = Field(None, description="default: the run's evaluation sampling")


def named_suite(run_config: dict[str, Any], name: str) -> SuiteSpec:
    """The suite ``name`` of a run (its ``eval.suites`` on top of its environment), not yet validated."""
    suites = (run_config.get("eval") or {}).get("suites") or {}
    if not isinstance(suites, dict) or name not in suites or not isinstance(suites[name], dict):
        known = ", ".join(sorted(suites)) if isinstance(suites, dict) and suites else "none"
        raise EvalInputError(f"unknown suite {name!r}; the run defines: {known}")
    env = run_config.get("env") or {}
    try:
        return SuiteSpec(
            name=name, env=str(env.get("id", "")), options={**env.get("options", {}), **suites[name]}
        )
    except (TypeError, ValueError):  # a record whose env is not what a run writes
        raise EvalInputError(f"bad suite {name!r}: the run's record does not describe it") from None


def resolve_suite(run_config: dict[str, Any], suite: str | SuiteSpec) -> SuiteSpec:
    """The environment id and the full, validated options that ``suite`` plays."""
    spec = named_suite(run_config, suite) if isinstance(suite, str) else suite
    try:
        from services.envs import resolve_options

        options = resolve_options(spec.env, spec.options)
    except (ConfigError, ValueError) as exc:
        raise EvalInputError(f"bad suite: {exc}") from None
    return spec.model_copy(update={"options": options})


def offered_datasets(data_dir: Path | None) -> list[str]:
    """The names a client may give file options: the regular files directly in ``data_dir``."""
    if data_dir is None or not data_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in data_dir.iterdir()
        if p.is_file() and not p.is_symlink() and DATASET_NAME.fullmatch(p.name)
    )


def with_dataset_files(spec: SuiteSpec, data_dir: Path | None) -> SuiteSpec:
    """``spec`` with each dataset name in a file option replaced by its file in ``data_dir`` (values that
    are not plain names, e.g. the paths of a run's own suites, stay)."""
    from services.envs import file_options

    options = dict(spec.options)
    for name in file_options(spec.env):
        value = options.get(name)
        if data_dir is not None and isinstance(value, str) and DATASET_NAME.fullmatch(value):
            options[name] = str(data_dir / value)
    return spec.model_copy(update={"options": options})


def client_suite(spec: SuiteSpec, data_dir: Path | None) -> SuiteSpec:
    """A suite a client sent: file options must name offered datasets; validated against the files
    with errors that reveal no server path; returned with the names (never paths) for the record."""
    from services.envs import file_options

    try:
        named = file_options(spec.env)
    except ValueError as exc:
        raise EvalInputError(f"bad suite: {exc}") from None
    offered = offered_datasets(data_dir)
    for name in named:
        value = spec.options.get(name)
        if value is not None and (not isinstance(value, str) or value not in offered):
            raise EvalInputError(f"option {name!r} takes the name of a dataset this server offers "
                                 f"({', '.join(offered) or 'none'}), not a path")  # fmt: skip
    if not any(spec.options.get(n) is not None for n in named):
        return resolve_suite({}, spec)
    try:
        resolved = resolve_suite({}, with_dataset_files(spec, data_dir))
    except EvalInputError:
        raise EvalInputError(
            f"bad suite: the options do not fit {spec.env!r} or a dataset could not be read"
        ) from None
    names = {n: spec.options[n] for n in named if spec.options.get(n) is not None}
    return resolved.model_copy(update={"options": {**resolved.options, **names}})


def eval_sampling(run_config: dict[str, Any], requested: EvalSampling | None) -> SamplingConfig:
    base = (run_config.get("eval") or {}).get("sampling") or {}
    try:
        sampling = SamplingConfig.model_validate(base)
    except ValidationError:  # the run's record, not the caller, is at fault: a 400 that says so, not a 500
        raise EvalInputError("bad sampling in the run's record") from None
    if requested is not None:
        sampling = sampling.model_copy(update=requested.model_dump())
    return sampling.model_copy(update={"n": 1})


def client_sampling(sampling: SamplingConfig) -> SamplingConfig:
    """Sampling taken from a record (the run's, or an evaluation's) within a client's bounds
    (:class:`EvalSampling`), one sample per task: a record must not ask for more than a client may."""
    try:
        EvalSampling.model_validate(sampling.model_dump(include={"temperature", "top_p", "max_tokens"}))
    except ValidationError as exc:
        fields = ", ".join(str(e["loc"][0]) for e in exc.errors())
        raise EvalInputError(f"bad sampling in the run's record: {fields} out of bounds") from None
    return sampling.model_copy(update={"n": 1})


def engine_config(checkpoint_path: str, base: EngineConfig | None = None, **overrides: Any) -> RolloutConfig:
    """``base`` (the caller's engine settings, default ones without) pointed at the checkpoint, with
    ``overrides`` (device, threads...). Never the run's record: its resolved config lives in Redis,
    and whoever can write Redis must not pick cache folders, compilation, precision or context."""
    engine = (base or EngineConfig()).model_dump()
    engine.update(model=checkpoint_path, **overrides)
    return RolloutConfig(engine=EngineConfig.model_validate(engine))


def run_evaluation(
    rollout: Rollout,
    suite: SuiteSpec,
    episodes: int,
    seed: int,
    sampling: SamplingConfig,
    on_progress: Callable[[int], None] | None = None,
    samples: int = 1,
) -> tuple[dict[str, float], EpisodeOutcomes | None]:
    """Play ``episodes`` tasks of ``suite`` (``samples`` times each) with ``rollout.play(specs, sampling)``;
    returns suite metrics (with pass@k when ``samples`` > 1) and the per-episode outcomes (None beyond
    :data:`~sftrl.registry.records.MAX_OUTCOMES` episodes)."""
    played = play_suite(rollout, suite.name, suite.env, suite.options, episodes, seed, sampling, samples,
                        CHUNK_EPISODES, on_progress)  # fmt: skip
    # outcomes of more episodes than a record may list are left out; the metrics stand alone
    outcomes = (
        EpisodeOutcomes.model_validate(episode_outcomes(played)) if len(played) <= MAX_OUTCOMES else None
    )
    return suite_metrics(played), outcomes


# -- evaluations recorded in the registry (shared by `sftrl evaluate` and the Serve replicas) ----------


def check_counts(episodes: int, samples: int, max_episodes: int | None) -> None:
    """EvalInputError unless ``episodes`` and ``samples`` keep a request's bounds and their product
    ``max_episodes``."""
    for name, value, high in (("episodes", episodes, MAX_EPISODES), ("samples", samples, MAX_SAMPLES)):
        if not 1 <= value <= high:
            raise EvalInputError(f"{name} must be 1 to {high} (got {value})")
    if max_episodes is not None and episodes * samples > max_episodes:
        raise EvalInputError(f"episodes x samples must be at most {max_episodes} (got {episodes * samples})")


def create_evaluation(
    registry: Registry,
    request: EvalRequest,
    owner: str = "",
    max_episodes: int | None = None,
    client: bool = False,
    data_dir: Path | None = None,
    roots: Sequence[Path] | None = None,
    lease_s: float = LEASE_S,
) -> EvaluationRecord:
    """Validate ``request`` against the registry and store it as a queued evaluation. A ``client``'s
    own suite may name files only as datasets of ``data_dir`` (:func:`client_suite`).

    Raises UnknownCheckpoint (404) or EvalInputError (400) with a message for the caller."""
    check_counts(request.episodes, request.samples, max_episodes)
    ckpt, note = usable_checkpoint(registry, request.checkpoint, roots)
    run = registry.get_run(ckpt.run_id)
    run_config = run.config if run is not None else {}
    if client:  # a suite taken from the run's record is checked exactly as one the client sent
        named = (
            request.suite if not isinstance(request.suite, str) else named_suite(run_config, request.suite)
        )
        suite = client_suite(named, data_dir)
    else:
        suite = resolve_suite(run_config, request.suite)
    sampling = eval_sampling(run_config, request.sampling)
    if client:
        sampling = client_sampling(sampling)
    if request.samples > 1 and sampling.temperature == 0:
        raise EvalInputError("several samples of a task (pass@k) need a temperature above 0")
    record = EvaluationRecord(
        eval_id=f"eval-{uuid.uuid4().hex[:16]}",
        checkpoint_id=ckpt.checkpoint_id,
        suite=suite,
        episodes=request.episodes,
        seed=request.seed,
        samples=request.samples,
        sampling=sampling.model_dump(mode="json"),
        owner=owner,
        note=note,
        lease_until=time.time() + lease_s,  # whoever runs it renews the lease; nobody: lost
    )
    registry.save_evaluation(record)
    return record


def usable_checkpoint(
    registry: Registry, ref: str, roots: Sequence[Path] | None = None
) -> tuple[CheckpointRecord, str]:
    """The checkpoint ``ref`` names, and a note. ``RUN`` or ``RUN@latest`` is the newest of the run
    whose folder lies under ``roots`` and passes a quick check (names and sizes; loading re-hashes
    every file): newer ones that fail are skipped, and the note names them. Raises UnknownCheckpoint."""
    from sftrl.checkpoint import checkpoint_roots, trusted

    try:
        run_id, step = parse_checkpoint_ref(ref)
        if step is not None:
            return registry.resolve_checkpoint(ref), ""
        candidates = registry.list_checkpoints(run_id)
    except (RegistryError, ValueError) as exc:
        raise UnknownCheckpoint(str(exc)) from None
    roots = roots or checkpoint_roots()
    skipped = []
    for ckpt in sorted(candidates, key=lambda c: c.step, reverse=True):
        try:
            trusted(ckpt.path, roots, deep=False)
        except ValueError as exc:  # UntrustedCheckpoint included
            log.warning("skipping %s: %s", ckpt.checkpoint_id, exc)
            skipped.append(ckpt.checkpoint_id)
            continue
        note = f"skipped {', '.join(skipped)}: failed verification (see the server's log)" if skipped else ""
        return ckpt, note
    if not candidates:
        raise UnknownCheckpoint(f"run {run_id!r} has no registered checkpoint")
    raise UnknownCheckpoint(
        f"no checkpoint of run {run_id!r} passes verification ({', '.join(skipped)} failed)"
    )


def error_text(exc: BaseException, detailed: bool, context: str) -> str:
    """What a record says about a failure: the message itself, or (for clients of a server) its kind
    and an error id, the message going to the log under that id."""
    if detailed:
        return f"{type(exc).__name__}: {exc}"[:2000]
    error_id = uuid.uuid4().hex[:12]
    log.error("%s failed (error %s): %s: %s", context, error_id, type(exc).__name__, exc)
    return f"{type(exc).__name__} (error {error_id}; the server's log has the details)"


def load_rollout(
    ckpt: CheckpointRecord,
    run_config: dict[str, Any],
    roots: Sequence[Path] | None = None,
    engine: EngineConfig | None = None,
    **engine_overrides: Any,
) -> RolloutWorker:
    """A rollout worker (one in-process vLLM engine) on the record's checkpoint, once it is known to
    lie under ``roots`` (default: :func:`sftrl.checkpoint.checkpoint_roots`) and to verify: the
    registry's records are not trusted to name the folder vLLM opens. The engine runs with ``engine``
    and ``engine_overrides`` (:func:`engine_config`); ``run_config``, the run's record, is not read
    for them (callers pass it along with the checkpoint)."""
    from services.rollout.worker import RolloutWorker
    from sftrl.checkpoint import checkpoint_roots, trusted

    del run_config  # deliberately unused: see engine_config
    folder = trusted(ckpt.path, roots or checkpoint_roots())  # before vLLM sees any file
    return RolloutWorker(engine_config(str(folder), engine, **engine_overrides))


class EvaluationCancelled(Exception):
    """The evaluation was cancelled (or marked lost) while it ran: stop, and leave its record as is."""


@contextmanager
def held_lease(registry: Registry, eval_id: str, seconds: float) -> Iterator[None]:
    """Renew the evaluation's lease every ``seconds / 3`` while the block runs, from a thread (one
    chunk of episodes can outlast a lease)."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            try:
                registry.renew_lease(eval_id, seconds)
            except (*REGISTRY_ERRORS, RegistryError) as exc:  # the next renewal may get through
                log.warning("could not renew the lease of %s: %s", eval_id, exc)

    registry.renew_lease(eval_id, seconds)
    thread = threading.Thread(target=renew, name=f"lease-{eval_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def execute_evaluation(
    registry: Registry,
    eval_id: str,
    get_rollout: Callable[[CheckpointRecord, dict[str, Any]], Rollout],
    on_progress: Callable[[int], None] | None = None,
    data_dir: Path | None = None,
    detailed_errors: bool = True,
    lease_s: float = LEASE_S,
    client: bool = False,
    max_episodes: int | None = None,
) -> EvaluationRecord:
    """Run a queued evaluation, holding its lease; its status, progress and metrics (or error) land
    in the registry. One cancelled or marked lost meanwhile stops at the next chunk of episodes and
    keeps that status. Without ``detailed_errors`` (a server) the record says what failed and an
    error id; the message, which may hold server paths, goes to this process's log under that id.
    For a ``client`` (a server), the record's suite and counts are checked again as a client's
    (:func:`client_suite`, :func:`check_counts` with ``max_episodes``): the record lay in Redis
    between its creation and now."""
    ev = registry.get_evaluation(eval_id)
    if ev is None:
        raise RegistryError(f"unknown evaluation {eval_id!r}")
    if ev.status in FINISHED:
        return ev
    registry.finish_evaluation(eval_id, status="running")
    with held_lease(registry, eval_id, lease_s):
        return _run_recorded(
            registry, ev, get_rollout, on_progress, data_dir, detailed_errors, client, max_episodes
        )


def _run_recorded(
    registry: Registry,
    ev: EvaluationRecord,
    get_rollout: Callable[[CheckpointRecord, dict[str, Any]], Rollout],
    on_progress: Callable[[int], None] | None,
    data_dir: Path | None,
    detailed_errors: bool,
    client: bool = False,
    max_episodes: int | None = None,
) -> EvaluationRecord:
    eval_id = ev.eval_id

    def progress(done: int) -> None:
        if registry.finish_evaluation(eval_id, episodes_done=done).status in FINISHED:
            raise EvaluationCancelled(eval_id)
        if on_progress is not None:
            on_progress(done)

    try:
        # the record's counts, suite and sampling are checked before an engine starts on it
        if client:
            check_counts(ev.episodes, ev.samples, max_episodes)
        sampling = SamplingConfig.model_validate(ev.sampling)
        sampling = client_sampling(sampling) if client else sampling
        suite = with_dataset_files(client_suite(ev.suite, data_dir) if client else ev.suite, data_dir)
        ckpt = registry.resolve_checkpoint(ev.checkpoint_id)
        run = registry.get_run(ckpt.run_id)
        rollout = get_rollout(ckpt, run.config if run is not None else {})
        metrics, outcomes = run_evaluation(
            rollout, suite, ev.episodes, ev.seed, sampling, on_progress=progress, samples=ev.samples
        )
    except EvaluationCancelled:
        return registry.get_evaluation(eval_id) or ev
    except Exception as exc:  # noqa: BLE001 - any failure is reported on the evaluation, not lost
        return registry.finish_evaluation(
            eval_id, status="failed", error=error_text(exc, detailed_errors, eval_id)
        )
    return registry.finish_evaluation(
        eval_id, status="done", metrics=metrics, outcomes=outcomes, episodes_done=ev.episodes * ev.samples
    )
