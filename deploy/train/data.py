"""The training loop's data: demonstrations written into the run folder and tokenised for the learner.

Everything here is a function of the run's config (and the stage, step), so a resumed run trains on
exactly the rows an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deploy.train.config import SFTDataSpec, TrainConfig
from services.envs import resolve_options

if TYPE_CHECKING:
    from rich.progress import Progress

    from services.envs.demonstrations import Demonstration
    from services.learner.sft_data import SFTExample
    from sftrl.trajectory import Trajectory


def data_seed(config: TrainConfig, data: SFTDataSpec) -> int:
    """Demonstration seeds: the data spec's own, moved by the run's seed (a study's seeds draw other
    demonstrations; seed 0 keeps the spec's)."""
    return data.seed + 1_000_000 * config.seed


class TrainingData:
    """Demonstrations of one run: generated into ``run_dir/data`` (a record of what was trained on)
    unless the spec names a file, then tokenised for the run's model."""

    def __init__(self, config: TrainConfig, run_dir: Path):
        self.config, self.run_dir = config, run_dir

    def sft_examples(
        self, data: SFTDataSpec, name: str, max_len: int, progress: Progress | None = None
    ) -> list[SFTExample]:
        """The rows of an SFT stage (or of an RL stage's SFT mix) named ``name``."""
        from services.envs.demonstrations import generate_demonstrations

        path = Path(data.path) if data.path else self.run_dir / "data" / f"{name}.jsonl"
        if not data.path and not path.exists():
            env = self.config.env
            options = resolve_options(env.id, {**env.options, **data.env_options})
            seed = data_seed(self.config, data)
            write_demonstrations(
                path, generate_demonstrations(env.id, options, data.episodes, seed, data.revision_fraction)
            )
        return self.tokenized(path, max_len, progress)

    def task_demonstrations(self, failed: Sequence[Trajectory], name: str, max_len: int) -> list[SFTExample]:
        """Expert demonstrations of exactly the tasks of ``failed`` (one trajectory per task), written
        to the run folder and tokenised; repeated until every learner rank has a row."""
        from services.envs.demonstrations import generate_demonstrations

        path = self.run_dir / "data" / "interleaved" / f"{name}.jsonl"
        write_demonstrations(path, (demo for traj in failed for demo in generate_demonstrations(
            traj.env_id, traj.env_options, 1, traj.seed, revision_fraction=0.0)))  # fmt: skip
        rows = self.tokenized(path, max_len)
        while rows and len(rows) < self.config.learner.world_size:
            rows = rows + rows
        return rows

    def tokenized(self, path: Path, max_len: int, progress: Progress | None = None) -> list[SFTExample]:
        from services.learner.sft_data import load_demonstrations, tokenize_sft
        from sftrl.models.processor import load_tokenizer_or_processor

        conversations = load_demonstrations(path)
        if progress is not None:  # long with images (the processor runs per conversation): show it
            conversations = progress.track(conversations, description=f"tokenising {path.name}")
        return tokenize_sft(conversations, load_tokenizer_or_processor(self.config.model), max_len)


def write_demonstrations(path: Path, demos: Iterable[Demonstration]) -> None:
    """Demonstrations as chat JSONL at ``path`` (images as PNG files in a folder beside it)."""
    from services.envs.demonstrations import DemonstrationWriter

    with DemonstrationWriter(None, path, path.parent / f"{path.stem}_images") as writer:
        for demo in demos:
            writer.add(demo)


def rows_for_step(pool: Sequence[SFTExample], count: int, seed: int, step: int) -> list[SFTExample]:
    """``count`` rows of ``pool`` for ``step``: consecutive slices of seeded permutations, a function of
    (seed, step) only, so a resumed run trains on the same rows."""
    per_epoch = len(pool)
    first = step * count
    epochs = range(first // per_epoch, (first + count - 1) // per_epoch + 1)
    order = np.concatenate([np.random.default_rng([seed, e]).permutation(per_epoch) for e in epochs])
    offset = first - epochs[0] * per_epoch
    return [pool[i] for i in order[offset : offset + count]]


def epoch_order(examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """The SFT stage's row order: enough seeded permutations of ``examples`` rows for ``steps``
    batches (a function of the seed only, for exact resume)."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // examples) + 1
    return np.concatenate([rng.permutation(examples) for _ in range(epochs)])
