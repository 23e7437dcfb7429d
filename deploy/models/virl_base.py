"""``virl-base``: a small causal LM that follows route instructions, trained here from scratch.

Paper 1's model already navigates with either kind of action before post-training; the question
is what post-training on absolute (compass) actions does to relative ones. A random model has no
such prior, so this builder makes one: a Llama of a few million parameters, the word-piece
tokenizer of :mod:`deploy.models.scratch`, SFT through the project's learner on V-IRL text
episodes in synthetic towns, each episode's action space (compass directions or turns) drawn
per episode and stated in its prompt, with wrong first attempts and their feedback at some points.

The towns are named here (:data:`TRAINING_TOWNS`); every city an evaluation suite or recipe plays
(:data:`HELD_OUT_CITIES`) is left out, and the data is checked for that before training.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field

from deploy.models.scratch import (
    SHIPPED_ROOT,
    DataPhase,
    ScratchRecipe,
    SFTSchedule,
    bar_summary,
    built,
    copy_shipped,
    greedy_bar,
    initial_llama,
    sft_phases,
    shipped_folder,
    ships,
    word_tokenizer,
)

VIRL = "sftrl/VIRL-v0"
# Cities the product's suites and recipes play (and the tokenizer corpus's): never in the base's data.
HELD_OUT_CITIES = ("new_york", "london", "san_francisco")
TRAINING_TOWNS = (
    "Alderford", "Brackenridge", "Calderwood", "Dunmere", "Elmstead", "Fairhollow", "Glenbrook",
    "Harrowgate", "Ivybridge", "Juniper Falls", "Kestrel Bay", "Larkspur", "Millbrook", "Northwick",
    "Oakhurst", "Pembury", "Queensmead", "Ravenscar", "Stonehaven", "Thornbury", "Upperton",
    "Valemont", "Westerly", "Yarrow Point",
)  # fmt: skip
BAR_SUITES: dict[str, dict[str, Any]] = {
    "id": {"actions": "absolute", "city": "new_york"},
    "ood_rule": {"actions": "relative", "city": "new_york"},
}
BAR_SEED = 10_000
BAR_FILE = "virl_base.json"
SHIPPED = SHIPPED_ROOT / "virl-base"
MODEL_LEN = 4096


class VIRLBaseConfig(ScratchRecipe):
    """How the base is made; the defaults are what ``sftrl models prepare virl-base`` runs.

    A curriculum, because a model this small learns to copy from its context only in short rows: first
    ``copy_steps`` of "Repeat: <sentences of the towns' prompts>" rows, then ``steps`` of rows cut after
    their first 1 to ``short_answers`` answers (one schedule at ``lr``), then ``whole_steps`` of whole
    episodes at ``whole_lr`` (a second schedule: the later points of a route). One row per micro-batch:
    with no padding mask, attention takes PyTorch's causal fast path."""

    prompt_style: str = "compact"
    towns: int = Field(len(TRAINING_TOWNS), ge=1, le=len(TRAINING_TOWNS))
    wrong_rate: float = Field(0.1, ge=0, le=1, description="share of points whose first attempt is wrong")
    fresh_names: bool = Field(
        False, description="re-draw a town's place names per episode: names must be copied, not recalled"
    )
    episodes: int = Field(3000, ge=1, description="routes played (each cut several ways, and whole)")
    copy_steps: int = Field(400, ge=0)
    copy_batch: int = Field(16, ge=1)
    steps: int = Field(2260, ge=1, description="steps of cut rows")
    batch_size: int = Field(4, ge=1)
    lr: float = Field(1e-3, gt=0)
    short_answers: int = Field(3, ge=1, description="a cut row keeps 1 to this many answers")
    whole_steps: int = Field(1000, ge=0)
    whole_batch: int = Field(2, ge=1)
    whole_lr: float = Field(5e-4, gt=0)
    micro_batch_size: int = Field(1, ge=1)
    max_len: int = Field(3584, ge=256)
    eval_episodes: int | None = Field(None, ge=1, description="per suite; None: 256, or 64 below 200 steps")

    def scaled(self, total_steps: int) -> VIRLBaseConfig:
        """The recipe at another size: its three phases in the same proportions, ``total_steps`` in all."""
        part = {
            k: round(getattr(self, k) * total_steps / self.total_steps) for k in ("copy_steps", "whole_steps")
        }
        return self.model_copy(update={**part, "steps": max(1, total_steps - sum(part.values()))})

    @property
    def total_steps(self) -> int:
        return self.copy_steps + self.steps + self.whole_steps


def play_route(env: Any, seed: int, wrong_rate: float, rng: Any, episode_id: str) -> Any:
    """One expert episode in which the first attempt at a point is wrong with ``wrong_rate``
    (at most one wrong attempt per point: the paper allows two), its feedback kept."""
    from services.envs.demonstrations import Demonstration

    expert = env.unwrapped
    obs, info = env.reset(seed=seed)
    messages = [{"role": "user", "content": obs["text"]}]
    wrong_here = bool(rng.random() < wrong_rate)
    while True:
        answer = expert.wrong_answer(rng) if wrong_here else expert.expert_answer()
        obs, _reward, terminated, _truncated, step = env.step(answer)
        messages.append({"role": "assistant", "content": answer})
        if terminated:
            break
        messages.append({"role": "user", "content": obs["text"]})
        wrong_here = False if wrong_here else bool(rng.random() < wrong_rate)  # a new point after a right one
        if len(messages) > 400:
            raise RuntimeError(f"episode {episode_id} did not end")
    if not step.get("success"):
        raise RuntimeError(f"the expert failed episode {episode_id}: the environment is inconsistent")
    meta = {"city": info["city"], "route": [info["start"], info["destination"], *info["instructions"]]}
    return Demonstration(episode_id, messages, [None] * len(messages), meta)


def demonstrations(config: VIRLBaseConfig) -> list[Any]:
    """The base's episodes: towns in turn, the action space drawn per episode."""
    import gymnasium as gym
    import numpy as np

    import services.envs  # noqa: F401  (registers the environments)

    towns = TRAINING_TOWNS[: config.towns]
    rng = np.random.default_rng(config.seed)
    envs = {
        (town, space): gym.make(VIRL, city=town, actions=space, prompt_style=config.prompt_style)
        for town in towns
        for space in ("absolute", "relative")
    }
    names_rng = np.random.default_rng(config.seed + 3)
    try:
        out = []
        for i in range(config.episodes):
            space = ("absolute", "relative")[int(rng.integers(2))]
            env = envs[(towns[i % len(towns)], space)]
            demo = play_route(env, config.seed * 1_000_003 + i, config.wrong_rate, rng, f"virl-base-{i}")
            out.append(with_fresh_names(demo, names_rng) if config.fresh_names else demo)
            out[-1].meta["actions"] = space
        return out
    finally:
        for env in envs.values():
            env.close()


@lru_cache(maxsize=64)
def _town_places(town: str) -> tuple[tuple[str, ...], re.Pattern[str]]:
    """A town's place names, longest first, and one pattern that finds any of them."""
    from services.envs.virl.city import generate_city, normalise_city_name
    from services.envs.virl.env import CITY_SEED

    names = tuple(sorted({p.name for p in generate_city(normalise_city_name(town), CITY_SEED).places},
                         key=lambda n: (-len(n), n)))  # fmt: skip
    return names, re.compile("|".join(re.escape(n) for n in names))


def with_fresh_names(demo: Any, rng: Any) -> Any:
    """The episode with its town's place names replaced, one to one, by names drawn anew.

    A town's names are fixed, so a small model could recall them from the town instead of copying
    them from its prompt; fresh names per episode leave copying as the only way to get them right
    (off by default: in the measured continuation it copied no better). Every text of the episode
    (prompt, observations, answers, feedback, its route record) uses the same mapping."""
    from services.envs.demonstrations import Demonstration
    from services.envs.virl.names import place_names

    names, pattern = _town_places(demo.meta["city"])
    fresh = dict(zip(names, (n for n, _kind in place_names(rng, len(names)))))

    def rename(text: str) -> str:
        return pattern.sub(lambda m: fresh[m.group(0)], text)

    messages = [{**m, "content": rename(m["content"])} for m in demo.messages]
    meta = {**demo.meta, "route": [rename(part) for part in demo.meta["route"]]}
    return Demonstration(demo.episode_id, messages, list(demo.images), meta)


def cut_conversations(demos: list[Any], rows: int, short_answers: int, seed: int) -> list[Any]:
    """``rows`` conversations, episodes in turn, each cut after its first 1 to ``short_answers`` answers
    (more first answers per token of compute; drawn per row, so an episode is cut several ways)."""
    import numpy as np

    from services.learner.sft_data import SFTConversation

    rng = np.random.default_rng(seed + 1)
    out = []
    for i in range(rows):
        demo = demos[i % len(demos)]
        keep = 2 * int(rng.integers(1, short_answers + 1))
        out.append(SFTConversation(f"{demo.episode_id}-cut{i}", demo.messages[:keep]))
    return out


def copy_conversations(demos: list[Any], rows: int, seed: int) -> list[Any]:
    """ "Repeat: <text>" answered with the text: 1 to 3 sentences of one episode's observations and
    route, so the model learns to copy from its context before it must copy names into answers."""
    import numpy as np

    from services.learner.sft_data import SFTConversation

    rng = np.random.default_rng(seed + 2)
    pools = [_sentences(d) for d in demos]
    out = []
    for i in range(rows):
        pool = pools[int(rng.integers(len(pools)))]
        text = " ".join(pool[int(j)] for j in rng.integers(0, len(pool), int(rng.integers(1, 4))))
        out.append(SFTConversation(f"copy{i}", [{"role": "user", "content": "Repeat: " + text},
                                                {"role": "assistant", "content": text}]))  # fmt: skip
    return out


def _sentences(demo: Any) -> list[str]:
    """The observation and route lines of an episode's prompts, without their labels or numbers."""
    found = []
    for message in demo.messages:
        if message["role"] != "user":
            continue
        for line in message["content"].split("\n"):
            line = re.sub(r"^(?:Current observation|Observation): |^\d+\. ", "", line)
            if len(line) < 200 and ("intersection" in line or "face" in line or "forward" in line):
                found.append(line)
    return found


def bar_routes(episodes: int) -> set[tuple[str, ...]]:
    """The routes the bar plays (start, destination, instructions), from the same seeds as the bar."""
    import gymnasium as gym

    from deploy.evaluate.suites import suite_specs

    routes = set()
    for name, options in BAR_SUITES.items():
        env = gym.make(VIRL, **options)
        try:
            for spec in suite_specs(name, VIRL, options, episodes, BAR_SEED):
                _obs, info = env.reset(seed=spec.seed)
                routes.add((info["start"], info["destination"], *info["instructions"]))
        finally:
            env.close()
    return routes


def check_held_out(demos: list[Any], episodes: int) -> None:
    """The evaluation cities and the bar's routes never occur in the base's data."""
    from services.envs.virl.city import normalise_city_name

    cities = {normalise_city_name(d.meta["city"]) for d in demos}
    seen = cities & set(HELD_OUT_CITIES)
    if seen:
        raise RuntimeError(f"held-out cities {sorted(seen)} occur in the base's data")
    shared = bar_routes(episodes) & {tuple(d.meta["route"]) for d in demos}
    if shared:
        raise RuntimeError(f"{len(shared)} of the bar's routes occur in the base's data")


def measure_bar(model_dir: Path, config: VIRLBaseConfig) -> dict[str, Any]:
    """Greedy episodes (the paper's 2 attempts per point) on held-out routes in both action spaces."""
    episodes = bar_episodes(config)
    options = {"prompt_style": config.prompt_style}
    metrics, seconds = greedy_bar(model_dir, VIRL, options, BAR_SUITES, episodes, BAR_SEED, MODEL_LEN)
    return {"episodes_per_suite": episodes, "seconds": seconds, "metrics": metrics}


def bar_episodes(config: VIRLBaseConfig) -> int:
    return config.eval_episodes or (256 if config.total_steps >= 200 else 64)


def curriculum_rows(demos: list[Any], tokenizer: Any, config: VIRLBaseConfig) -> dict[str, list[Any]]:
    """The three phases' rows: copy rows (each seen once), cut rows (drawn per row), whole episodes."""
    from services.learner.sft_data import SFTConversation, tokenize_sft

    return {
        "copy": tokenize_sft(copy_conversations(demos, max(1, config.copy_steps * config.copy_batch), config.seed),
                             tokenizer, config.max_len),
        "cut": tokenize_sft(cut_conversations(demos, config.steps * config.batch_size, config.short_answers, config.seed),
                            tokenizer, config.max_len),
        "whole": tokenize_sft((SFTConversation(d.episode_id, d.messages) for d in demos), tokenizer, config.max_len),
    }  # fmt: skip


def train_curriculum(
    model_dir: Path, rows: dict[str, list[Any]], config: VIRLBaseConfig, report: Callable[[str], None]
) -> list[dict[str, float]]:
    """Copy then cut rows under one schedule at ``lr``; then whole episodes under another at ``whole_lr``."""
    first = [DataPhase(rows["copy"], config.copy_steps, config.copy_batch),
             DataPhase(rows["cut"], config.steps, config.batch_size)]  # fmt: skip
    c = config
    log = sft_phases(
        model_dir, [p for p in first if p.steps],
        SFTSchedule(c.seed, c.copy_steps + c.steps, c.batch_size, c.micro_batch_size, c.lr, c.warmup_steps), report,
    )  # fmt: skip
    if c.whole_steps:
        report("whole episodes: the later points of a route")
        log += sft_phases(
            model_dir, [DataPhase(rows["whole"], c.whole_steps, c.whole_batch)],
            SFTSchedule(c.seed, c.whole_steps, c.whole_batch, c.micro_batch_size, c.whole_lr, c.warmup_steps), report,
        )  # fmt: skip
    return log


def build_virl_base(out_dir: Path, options: Any, report: Callable[[str], None]) -> Any:
    """The catalogue builder: the shipped base for the default options (unless ``retrain``); else
    towns' episodes, tokenizer, random init, the SFT curriculum, and the bar measured and saved beside
    the weights. ``options.steps`` sets the curriculum's size, its phases in proportion."""
    if ships(options, SHIPPED):
        return copy_shipped(shipped_folder(SHIPPED, options.seed), out_dir, report)
    config = VIRLBaseConfig(seed=options.seed)
    config = config.scaled(options.steps) if options.steps else config
    start = time.perf_counter()
    report("writing route-following episodes in the training towns")
    demos = demonstrations(config)
    check_held_out(demos, bar_episodes(config))
    report("training the tokenizer")
    tokenizer = word_tokenizer(
        (m["content"] for d in demos[:2000] for m in d.messages), config.vocab_size, MODEL_LEN
    )
    model = initial_llama(config.shape(MODEL_LEN), tokenizer, config.seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report("tokenising the curriculum: copy rows, cut rows, whole episodes")
    rows = curriculum_rows(demos, tokenizer, config)
    data_s = time.perf_counter() - start
    log = train_curriculum(out_dir, rows, config, report)
    train_s = time.perf_counter() - start - data_s
    report("measuring the bar (greedy episodes on held-out routes, both action spaces)")
    bar = measure_bar(out_dir, config)
    seconds = {"data": data_s, "train": train_s, "bar": bar["seconds"], "total": time.perf_counter() - start}
    summary = bar_summary(
        config,
        BAR_SUITES,
        bar,
        log,
        seconds,
        bar_suites=BAR_SUITES,
        held_out_cities=HELD_OUT_CITIES,
        episodes=len(demos),
        rows={k: len(v) for k, v in rows.items()},
        row_tokens_mean={k: sum(map(len, v)) / max(1, len(v)) for k, v in rows.items()},
        first_loss=log[0]["loss"],
        episodes_per_suite=bar["episodes_per_suite"],
    )
    (out_dir / BAR_FILE).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return built(
        model, tokenizer, f"made here: SFT from scratch on {len(demos)} route-following episodes in "
        f"{config.towns} towns ({config.total_steps} steps, seed {config.seed}); bar in {BAR_FILE}", MODEL_LEN,
    )  # fmt: skip
