"""Differences between arms paired by seed and task: known answers on constructed tables, and a
simulation of whole studies (3 seeds x 256 tasks, binary outcomes) that the 95% interval covers the
true difference in 93-97% of them, where a percentile bootstrap over the same seeds covers far less."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.studies.intervals import (
    bootstrap_rate_difference,
    paired_difference,
    paired_table,
    seed_difference,
    table_interval,
)

T2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom


def test_seeds_that_differ_by_a_constant_give_students_t_on_the_seeds():
    # every task of seed s differs by d_s: no task part, the interval is t(2) on (0.1, 0.2, 0.3)
    table = np.repeat(np.array([[0.1], [0.2], [0.3]]), 8, axis=1)
    got = table_interval(table)
    half = T2 * 0.1 / np.sqrt(3)
    assert got.estimate == pytest.approx(0.2)
    assert (got.low, got.high) == pytest.approx((0.2 - half, 0.2 + half))
    seeds = seed_difference([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert (seeds.estimate, seeds.low, seeds.high) == pytest.approx((got.estimate, got.low, got.high))
    assert not seeds.no_spread and seeds.high > seeds.low


def test_seeds_whose_differences_are_equal_give_no_interval():
    # 2 seeds of 64 items each, both 1 item apart: t has zero spread, which is no evidence of precision
    same = seed_difference([50 / 64, 40 / 64], [51 / 64, 41 / 64])
    assert same.no_spread and not same.excludes_zero()
    assert "gives no interval (nothing shown)" in same.verdict("Accuracy on L2, A minus B")


def test_tasks_are_matched_by_id_and_a_single_seed_arm_stands_for_every_seed():
    a = [{"t1": 1, "t2": 1, "t3": 0, "extra": 1}, {"t3": 1, "t2": 0, "t1": 1}]
    b = [{"t2": 0, "t1": 1, "t3": 0}]  # one seed (e.g. the base), played by both seeds of a
    table = paired_table(a, b)
    assert table.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # tasks t1, t2, t3; "extra" not shared
    got = paired_difference(a, b)
    assert got.estimate == pytest.approx(1 / 3) and got.low <= got.estimate <= got.high
    same = paired_difference([{"x": 1, "y": 0}] * 3, [{"x": 0, "y": 0}] * 3)
    # seeds agree, but two tasks say little about the tasks not played: wide, and never beyond [-1, 1]
    assert same.estimate == 0.5 and (same.low, same.high) == (-1.0, 1.0)


def test_refusals_say_why():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference([{"a": 1}] * 2, [{"a": 0}] * 3)
    with pytest.raises(ValueError, match="share no task"):
        paired_difference([{"a": 1, "b": 0}], [{"c": 0, "d": 1}])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        paired_difference([{"a": 1}] * 3, [{"a": 0}] * 3)


def simulated_study(rng, seeds, tasks, seed_sd, task_sd, interaction_sd, effect):
    """Success probabilities of two arms on ``tasks`` shared tasks, for ``seeds`` seeds each (seed k of
    both arms shares a start, so their seed effects are correlated), on the logit scale."""
    difficulty = rng.normal(0, task_sd, tasks)
    interaction = rng.normal(0, interaction_sd, tasks)  # tasks one arm is better at than the other
    shared = rng.normal(0, seed_sd, (seeds, 1))
    own_a, own_b = rng.normal(0, seed_sd, (2, seeds, 1))
    logit_a = effect / 2 + difficulty + interaction / 2 + shared + own_a
    logit_b = -effect / 2 + difficulty - interaction / 2 + shared + own_b
    return 1 / (1 + np.exp(-logit_a)), 1 / (1 + np.exp(-logit_b))


# (seed sd, task difficulty sd, task x arm sd, effect), logits: seeds that barely differ (as on the
# GP studies' rule-OOD suite), seeds that differ more than their episodes do (as on ID), tasks that
# favour one arm, tasks that matter more than seeds, and no effect at all
REGIMES = [
    (0.0, 1.5, 0.0, 0.5),
    (0.5, 1.5, 0.0, 0.5),
    (0.3, 1.5, 0.6, 0.3),
    (0.0, 0.5, 3.0, 0.0),
    (0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("regime", REGIMES)
def test_the_interval_covers_the_true_difference_in_95_percent_of_simulated_studies(regime):
    rng = np.random.default_rng(7)
    big_a, big_b = simulated_study(np.random.default_rng(1), 4000, 4000, *regime)
    truth = float((big_a - big_b).mean())  # over the populations of seeds and tasks
    covered = {"paired": 0, "bootstrap over seeds": 0, "t over seeds": 0}
    studies = 800
    for _ in range(studies):
        pa, pb = simulated_study(rng, 3, 256, *regime)
        ya, yb = (rng.random(pa.shape) < pa).astype(float), (rng.random(pb.shape) < pb).astype(float)
        counts_a, counts_b = ([(int(k), 256) for k in y.sum(axis=1)] for y in (ya, yb))
        found = {
            "paired": table_interval(ya - yb),
            "bootstrap over seeds": bootstrap_rate_difference(
                counts_a, counts_b, paired=True, resamples=400, seed=int(rng.integers(1 << 30))
            ),
            "t over seeds": seed_difference(ya.mean(axis=1), yb.mean(axis=1)),
        }
        for name, got in found.items():
            covered[name] += got.low <= truth <= got.high
    rate = {name: n / studies for name, n in covered.items()}
    print(f"regime {regime}: coverage {rate}")
    assert 0.93 <= rate["paired"] <= 0.97
    if regime[0] > 0:  # the seeds matter: 3 of them resampled cover the truth far less often
        assert rate["bootstrap over seeds"] < 0.9
    if regime[2] > 2:  # the tasks matter: the seeds' spread alone misses their draw
        assert rate["t over seeds"] < 0.9
