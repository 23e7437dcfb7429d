"""Throughput of reset + step + verify for every environment, pinned to one core.

    python -m bench.envs [--seconds 3] [--quick]

Each episode mixes a wrong attempt, a malformed one and the expert's answer, so every verifier
path is exercised. Writes bench/results/<cpu-kind>/envs.json (results of other CPU kinds stay
beside it). Target: GeneralPoints text mode at least 10,000 scored attempts per second on one core.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

import services.envs  # noqa: F401
from bench.machine import write_result
from services.verifier import points_solver

TARGET_GP_TEXT = 10_000.0
CASES: list[tuple[str, dict[str, Any]]] = [
    ("sftrl/GeneralPoints-v0", {"mode": "text"}),
    ("sftrl/GeneralPoints-v0", {"mode": "text", "face_cards": "as_11_12_13"}),
    ("sftrl/GeneralPoints-v0", {"mode": "image", "image_size": 1200}),
    ("sftrl/GeneralPoints-v0", {"mode": "image", "image_size": 224}),
    ("sftrl/VIRL-v0", {"mode": "text"}),
    ("sftrl/VIRL-v0", {"mode": "text", "actions": "relative"}),
    ("sftrl/VIRL-v0", {"mode": "image"}),
    ("sftrl/VisualQA-v0", {"mode": "text"}),
    ("sftrl/VisualQA-v0", {"mode": "image"}),
]


def measure(env_id: str, options: dict[str, Any], seconds: float, warm: bool = True) -> dict[str, Any]:
    env = gym.make(env_id, **options)
    expert = env.unwrapped
    rng = np.random.default_rng(0)

    def episode(seed: int) -> int:
        env.reset(seed=seed)
        attempts, kind = 0, 0
        while True:
            # Cycle wrong -> malformed -> expert, then expert until the episode ends.
            answer = (expert.wrong_answer(rng), "{not json", expert.expert_answer())[min(kind, 2)]
            kind += 1
            _, _, terminated, truncated, _ = env.step(answer)
            attempts += 1
            if terminated or truncated:
                return attempts

    warm_until = time.perf_counter() + (min(1.0, seconds / 3) if warm else 0.0)
    seed = 0
    while time.perf_counter() < warm_until:  # warm caches (solver tables, fonts, cities)
        episode(seed)
        seed += 1
    attempts = episodes = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        attempts += episode(1_000_000 + episodes)
        episodes += 1
    env.close()
    return {
        "env": env_id,
        "options": options,
        "solver_cache": "warm" if warm else "cold",
        "attempts_per_s": round(attempts / elapsed, 1),
        "episodes_per_s": round(episodes / elapsed, 1),
        "us_per_attempt": round(1e6 * elapsed / attempts, 1),
        "attempts": attempts,
        "seconds": round(elapsed, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="0.5 s per case (smoke run)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    seconds = 0.5 if args.quick else args.seconds
    console = Console()
    # Cold: a fresh process, every hand new to the solver. Warm: after points_solver.warm_cache(),
    # which long-running rollout workers do once (a few seconds); this is the steady state.
    points_solver.clear_cache()
    cold = measure(*CASES[0], seconds, warm=False)
    t0 = time.perf_counter()
    points_solver.warm_cache(24)
    warm_s = time.perf_counter() - t0
    rows = [cold] + [measure(env_id, opts, seconds) for env_id, opts in CASES]
    table = Table(title="reset + step + verify, one core")
    for col in ("env", "options", "solver", "attempts/s", "episodes/s", "µs/attempt"):
        table.add_column(col)
    for r in rows:
        opts = " ".join(f"{k}={v}" for k, v in r["options"].items())
        table.add_row(
            r["env"].removeprefix("sftrl/"),
            opts,
            r["solver_cache"],
            f"{r['attempts_per_s']:,.0f}",
            f"{r['episodes_per_s']:,.0f}",
            str(r["us_per_attempt"]),
        )
    console.print(table)
    gp_text = rows[1]["attempts_per_s"]
    verdict = "meets" if gp_text >= TARGET_GP_TEXT else "MISSES"
    console.print(
        f"GeneralPoints text (warm solver): {gp_text:,.0f} attempts/s — {verdict} the "
        f"{TARGET_GP_TEXT:,.0f}/s target; cold: {cold['attempts_per_s']:,.0f}/s; warming took {warm_s:.1f} s"
    )
    path = write_result("envs", {
        "benchmark": "envs", "pinned_cores": 1, "seconds_per_case": seconds, "solver_warm_cache_s": round(warm_s, 2),
        "target": {"case": "GeneralPoints text, warm solver", "attempts_per_s": TARGET_GP_TEXT, "met": gp_text >= TARGET_GP_TEXT},
        "results": rows,
    })  # fmt: skip
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
