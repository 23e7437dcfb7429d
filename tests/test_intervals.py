"""Intervals against known values: Wilson for 0/10, 5/10, 10/10; the bootstrap over seeds and episodes; the
sentence that says whether an interval of a difference excludes zero."""

from __future__ import annotations

import pytest

from deploy.studies.intervals import Interval, bootstrap_rate_difference, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(0, 10, 0.0, 0.27753), (5, 10, 0.23659, 0.76341), (10, 10, 0.72247, 1.0), (1, 100, 0.00177, 0.05449)],
)
def test_wilson_known_values(k, n, low, high):
    got = wilson(k, n)
    assert (
        got.estimate == k / n
        and got.low == pytest.approx(low, abs=1e-5)
        and got.high == pytest.approx(high, abs=1e-5)
    )


def test_wilson_refuses_impossible_counts():
    for k, n in ((3, 2), (-1, 5), (0, 0)):
        with pytest.raises(ValueError):
            wilson(k, n)


def test_verdicts_on_constructed_intervals():
    assert Interval(0.1, 0.02, 0.2).excludes_zero() and Interval(-0.1, -0.2, -0.01).excludes_zero()
    assert not Interval(0.05, -0.01, 0.1).excludes_zero() and not Interval(0.0, 0.0, 0.1).excludes_zero()
    assert "excludes zero (the difference is above zero)" in Interval(0.1, 0.02, 0.2).verdict("RL - SFT")
    assert "excludes zero (the difference is below zero)" in Interval(-0.1, -0.2, -0.01).verdict("x")
    text = Interval(0.05, -0.01, 0.1).verdict("OOD success of RL minus SFT")
    assert text.startswith("OOD success of RL minus SFT: +5.0% (95% interval -1.0% to +10.0%)")
    assert "does not exclude zero" in text


def test_rate_bootstrap_counts_seeds_and_episodes():
    # one seed each: a bootstrap over episodes, close to the normal approximation of two proportions
    one = bootstrap_rate_difference([(128, 256)], [(64, 256)], seed=0)
    se = ((0.5 * 0.5 + 0.25 * 0.75) / 256) ** 0.5
    assert one.estimate == pytest.approx(0.25)
    assert one.low == pytest.approx(0.25 - 1.96 * se, abs=0.01) and one.high == pytest.approx(
        0.25 + 1.96 * se, abs=0.01
    )
    # three seeds that disagree widen the interval beyond the episodes' spread
    spread = bootstrap_rate_difference([(200, 256), (128, 256), (56, 256)], [(64, 256)] * 3, seed=0)
    assert spread.estimate == pytest.approx(0.25) and spread.high - spread.low > 2 * (one.high - one.low)
    # paired seeds: a difference that holds in every seed stays clear of zero even when seeds disagree
    paired = bootstrap_rate_difference([(200, 256), (100, 256), (30, 256)], [(180, 256), (80, 256), (10, 256)],
                                       paired=True, seed=0)  # fmt: skip
    unpaired = bootstrap_rate_difference([(200, 256), (100, 256), (30, 256)], [(180, 256), (80, 256), (10, 256)],
                                         seed=0)  # fmt: skip
    assert paired.excludes_zero() and not unpaired.excludes_zero()
    zero = bootstrap_rate_difference([(0, 256)] * 3, [(0, 256)] * 3)
    assert (zero.estimate, zero.low, zero.high) == (0.0, 0.0, 0.0) and not zero.excludes_zero()
    with pytest.raises(ValueError, match="same seeds"):
        bootstrap_rate_difference([(1, 2)], [(1, 2), (1, 2)], paired=True)
    with pytest.raises(ValueError, match="successes <= episodes"):
        bootstrap_rate_difference([(3, 2)], [(1, 2)])
