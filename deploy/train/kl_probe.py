"""KL to the start: how far training has moved the policy on the task's own inputs.

*RL's Razor* (Shenfeld, Pari and Agrawal, arXiv 2509.04259) finds that forgetting follows the forward
KL(pi_0 || pi) measured on the new task's inputs, whatever the algorithm. So every evaluation of a run
also measures it: before the first step, the run's starting model answers ``samples`` ID prompts at
temperature 1 (the first turn of each episode) and the learner scores those answers; at each evaluation
the learner scores them again with the current weights. The mean over answer tokens of
``log pi_0(y) - log pi(y)``, for y drawn from pi_0, is the forward KL per token (unbiased; single
tokens may be negative), with a 95% bootstrap interval over the answers.

The samples and their start log-probs are kept in the run folder (``kl_reference.jsonl``), so a
resumed run measures against the same start; a study points an arm at the folder of the arm it
descends from, whose start is the study's base (``eval.kl_references``), for KL to the base too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.evaluate.suites import suite_specs
from services.learner.config import RLConfig
from services.rollout.config import SamplingConfig
from sftrl.trajectory import Trajectory, read_jsonl, write_jsonl

if TYPE_CHECKING:
    from services.learner.batch import RLBatch

REFERENCE_FILE = "kl_reference.jsonl"
START_LOGPROBS = "start_logprobs"  # in each first turn's info: the starting model's scores of its answer
MAX_SAMPLES = 4096  # a reference file holding more was not written by this code


def sample_start(rollout: Any, env_id: str, options: dict[str, Any], samples: int, seed: int,
                 max_tokens: int) -> list[Trajectory]:  # fmt: skip
    """``samples`` ID episodes answered at temperature 1 by the model the engines hold, cut to their
    first turn (the task's own prompt)."""
    specs = suite_specs("kl", env_id, options, samples, seed)
    played = rollout.play(specs, SamplingConfig(temperature=1.0, max_tokens=max_tokens, seed=seed))
    return [t.model_copy(update={"turns": t.turns[:1]}) for t in played if t.turns]


def answer_batch(trajectories: Sequence[Trajectory], pad_id: int, max_len: int | None) -> RLBatch:
    """The learner's rows of the first turns (prompt, then the answer the log-probs are taken on)."""
    from deploy.train.rl_step import attach_images
    from services.learner.batch import build_rl_batch

    batch = build_rl_batch(trajectories, None, RLConfig(algorithm="grpo"), pad_id, max_len=max_len)
    attach_images(batch, list(trajectories))
    return batch


def answer_logprobs(learner: Any, trajectories: Sequence[Trajectory], pad_id: int,
                    max_len: int | None) -> list[list[float]]:  # fmt: skip
    """Per answer, the learner's current log-prob of each of its tokens."""
    batch = answer_batch(trajectories, pad_id, max_len)
    scored = learner.forward_logprobs(batch)
    mask = batch.action_mask.bool()
    return [scored[i][mask[i]].tolist() for i in range(len(batch))]


def kl_per_token(start: Sequence[Sequence[float]], now: Sequence[Sequence[float]], resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float, int]:  # fmt: skip
    """Forward KL per token from the start's and the current log-probs of the same sampled answers:
    ``sum(start - now) / tokens``, its 95% percentile bootstrap interval over answers, and the tokens."""
    if len(start) != len(now) or not start:
        raise ValueError(f"need the same answers scored twice (got {len(start)} and {len(now)})")
    sums = np.array([float(np.sum(np.subtract(a, b))) for a, b in zip(start, now, strict=True)])
    counts = np.array([len(a) for a in start], dtype=float)
    if counts.sum() == 0:
        raise ValueError("the sampled answers have no tokens")
    estimate = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sums), size=(resamples, len(sums)))
    totals = counts[pick].sum(axis=1)
    draws = sums[pick].sum(axis=1) / np.where(totals > 0, totals, 1.0)
    low, high = np.percentile(draws, [2.5, 97.5])
    return estimate, float(low), float(high), int(counts.sum())


def save_reference(
    run_dir: Path, trajectories: list[Trajectory], logprobs: list[list[float]]
) -> list[Trajectory]:
    """The start's samples with its scores in each first turn's info, written atomically; returns them as read
    back from the file (the run measures against what it will find on a resume)."""
    kept = []
    for traj, lp in zip(trajectories, logprobs, strict=True):
        turn = traj.turns[0].model_copy(update={"info": {**traj.turns[0].info, START_LOGPROBS: lp}})
        kept.append(traj.model_copy(update={"turns": [turn]}))
    path = write_jsonl(kept, run_dir / REFERENCE_FILE)
    back = load_reference(run_dir) or []
    if len(back) != len(kept):
        raise RuntimeError(f"{path} did not read back as written")
    return back


def load_reference(run_dir: Path) -> list[Trajectory] | None:
    """A run's start samples (each first turn carrying its start log-probs); None when it has none.
    Bounded: at most :data:`MAX_SAMPLES` trajectories, each checked against the schema."""
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file():
        return None
    found = []
    for traj in read_jsonl(path):
        lp = traj.turns[0].info.get(START_LOGPROBS) if len(traj.turns) == 1 else None
        if not isinstance(lp, list) or len(lp) != len(traj.turns[0].response_ids):
            raise ValueError(f"{path}: {traj.episode_id} carries no start log-probs for its answer")
        found.append(traj)
        if len(found) > MAX_SAMPLES:
            raise ValueError(f"{path}: more than {MAX_SAMPLES} samples")
    return found


class KLProbe:
    """The references of one run (``"start"``: its own start; others by name, e.g. ``"base"``) and
    the measurement at each evaluation: ``kl/<name>``, ``kl_low/<name>``, ``kl_high/<name>``,
    ``kl_tokens/<name>``."""

    def __init__(self, references: dict[str, list[Trajectory]], pad_id: int, max_len: int | None):
        self.references, self.pad_id, self.max_len = references, pad_id, max_len

    def measure(self, learner: Any) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, trajs in self.references.items():
            start = [t.turns[0].info[START_LOGPROBS] for t in trajs]
            kl, low, high, tokens = kl_per_token(
                start, answer_logprobs(learner, trajs, self.pad_id, self.max_len)
            )
            out |= {
                f"kl/{name}": kl,
                f"kl_low/{name}": low,
                f"kl_high/{name}": high,
                f"kl_tokens/{name}": tokens,
            }
        return out


KL_SEED_OFFSET = 500_000  # the prompts are ID tasks, but not the evaluation's own


def open_probe(run_dir: Path, config: Any, rollout: Any, learner: Any, fresh: bool,
               say: Any = print) -> KLProbe | None:  # fmt: skip
    """The run's probe (None when ``eval.kl_samples`` is 0): its start reference, made now when the run
    is ``fresh`` (the engines and the learner still hold the starting weights) and read back when it
    resumes; and the references ``eval.kl_references`` names, where their folders hold one."""
    from transformers import AutoTokenizer

    from sftrl.models import resolve_model

    ev = config.eval
    if not ev.kl_samples:
        return None
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    own = load_reference(run_dir)
    if own is None and fresh:
        options = {**config.env.options, **ev.suites[ev.kl_suite]}
        samples = sample_start(rollout, config.env.id, options, ev.kl_samples, ev.seed + KL_SEED_OFFSET,
                               ev.sampling.max_tokens)  # fmt: skip
        own = save_reference(run_dir, samples, answer_logprobs(learner, samples, pad_id, None))
    references: dict[str, list[Trajectory]] = {}
    if own is None:
        say(
            f"no {REFERENCE_FILE} in {run_dir} (a run begun before it was kept): KL to the start not measured"
        )
    else:
        references["start"] = own
    for name, folder in ev.kl_references.items():
        found = load_reference(Path(folder))
        if found is None:
            say(f"no {REFERENCE_FILE} in {folder}: KL to {name} not measured")
        else:
            references[name] = found
    return KLProbe(references, pad_id, None) if references else None
