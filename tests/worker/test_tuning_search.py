"""The tuner's rules: the SLO filter, the pruning rule, the winner, the precision guard."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from polyserve_worker.tuning import guarding, measuring, searching, space


def point(c: int, rate: float, p95: float, errors: int = 0) -> measuring.Point:
    return measuring.Point(c, rate, p95 / 2, p95, p95 * 1.2, errors)


def curve(*points: measuring.Point) -> measuring.Curve:
    return measuring.Curve(list(points))


def test_the_capacity_is_the_best_throughput_whose_p95_meets_the_slo() -> None:
    ramp = curve(point(1, 500, 2), point(4, 1800, 6), point(16, 2600, 40), point(64, 2900, 90))
    assert ramp.capacity(50) == 2600
    assert ramp.best(50) == ramp.points[2]
    assert ramp.capacity(5) == 500
    assert ramp.capacity(1) == 0.0 and ramp.best(1) is None


def test_a_window_with_errors_or_without_answers_never_meets_the_slo() -> None:
    assert not point(8, 3000, 5, errors=1).meets(50)
    assert not measuring.Point(8, 0.0, math.nan, math.nan, math.nan, 0).meets(50)
    assert curve(point(8, 3000, 5, errors=3), point(1, 400, 2)).capacity(50) == 400


def test_the_latency_at_a_rate_is_interpolated_along_the_curve() -> None:
    ramp = curve(point(1, 1000, 2), point(2, 2000, 4), point(4, 3000, 10))
    assert ramp.latency_at(1500) == pytest.approx(3.0)
    assert ramp.latency_at(500) == 2
    assert ramp.latency_at(3000) == 10
    assert ramp.latency_at(3500) is None


def flat(value: float, step: int) -> dict[int, float]:
    """A trial's values up to ``step`` that stopped growing: ``value`` at its last two steps."""
    return {s: value for s in range(step + 1)}


def test_a_trial_far_behind_the_best_at_the_same_concurrency_is_hopeless() -> None:
    best = {0: 500.0, 1: 1000.0, 2: 1900.0, 3: 3000.0, 4: 4000.0}
    short = {0: 450.0, 1: 900.0}  # a ramp that ended at step 1 keeps its last value
    assert searching.hopeless(flat(1400, 3), 3, [best, short], ratio=0.5, warmup_steps=3)
    assert not searching.hopeless(flat(1600, 3), 3, [best, short], ratio=0.5, warmup_steps=3)
    # Never during the warm-up windows, and never without a finished trial to compare with.
    assert not searching.hopeless(flat(10, 2), 2, [best], ratio=0.5, warmup_steps=3)
    assert not searching.hopeless(flat(10, 5), 5, [], ratio=0.5, warmup_steps=3)
    # Past the end of every finished ramp, their final values are the bar.
    assert searching.hopeless(flat(1999, 7), 7, [best], ratio=0.5, warmup_steps=3)


def test_a_trial_still_scaling_with_its_concurrency_is_not_pruned_however_far_behind() -> None:
    best = {0: 500.0, 1: 1000.0, 2: 1900.0, 3: 4000.0, 4: 6000.0}
    # A 4 ms queue delay: c/(4 ms) at every concurrency, doubling with each window.
    delayed = {0: 240.0, 1: 480.0, 2: 950.0, 3: 1900.0}
    assert not searching.hopeless(delayed, 3, [best], ratio=0.5, warmup_steps=3)
    # Once it stops growing that fast it is judged like any other.
    assert searching.hopeless({**delayed, 4: 2100.0}, 4, [best], ratio=0.5, warmup_steps=3)
    assert not searching.hopeless(
        {**delayed, 4: 2100.0}, 4, [best], ratio=0.5, warmup_steps=3, scaling=1.05
    )


def test_optunas_study_prunes_through_the_rule() -> None:
    distributions = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
    study = optuna.create_study(direction="maximize", pruner=searching.BehindTheBest(0.5, 1))
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 1},
            distributions=distributions,
            value=4000.0,
            intermediate_values={0: 1000.0, 1: 2500.0, 2: 4000.0},
        )
    )
    slow = study.ask()
    slow.report(1000.0, 1)
    assert slow.should_prune()
    close = study.ask()
    close.report(2000.0, 1)
    assert not close.should_prune()
    early = study.ask()
    early.report(1.0, 0)
    assert not early.should_prune()


def trial(
    number: int, capacity: float, p95_at: float, state: str = searching.MEASURED
) -> searching.Trial:
    ramp = curve(point(1, capacity / 4, p95_at), point(8, capacity, p95_at * 3))
    return searching.Trial(
        number, space.Candidate(backend="onnxruntime"), state, ramp, capacity=capacity
    )


def test_a_re_measured_trial_wins_over_a_single_reading_above_its_mean() -> None:
    lucky = trial(1, 6600, 2.0)
    steady = trial(2, 6200, 2.0)
    steady.capacities = [6400, 6000, 6200]
    other = trial(3, 5000, 1.0)
    other.capacities = [5200, 4800]
    assert steady.confirmed and not lucky.confirmed
    assert searching.choose([lucky, steady, other], rate=250) is steady
    # Without a re-measured trial the single readings decide.
    assert searching.choose([lucky, trial(2, 6200, 2.0)], rate=250) is lucky


def test_the_winner_has_the_highest_capacity_and_a_near_tie_goes_to_the_lower_latency() -> None:
    trials = [
        trial(0, 1000, 2.0),
        trial(1, 2000, 3.0),
        trial(2, 1990, 1.0),
        trial(3, 5000, 0.1, searching.PRUNED),
    ]
    assert searching.choose(trials, rate=250) is trials[2]
    assert searching.choose(trials[:2], rate=250) is trials[1]
    assert searching.choose([trial(0, 0, 1.0)], rate=0) is None
    assert searching.choose([], rate=0) is None


def test_a_lower_precision_within_the_tolerance_of_fp32_is_accepted() -> None:
    rng = np.random.default_rng(0)
    reference = [{"OUTPUT0": rng.standard_normal((1, 10)).astype(np.float32)} for _ in range(8)]
    close = [{"OUTPUT0": r["OUTPUT0"] * 1.002} for r in reference]
    verdict = guarding.compare(reference, close, "bf16", tolerance=0.01)
    assert verdict.accepted
    assert 0 < verdict.error < 0.01
    assert verdict.top1_agreement == 1.0
    assert "accepted" in verdict.describe() and "bf16 vs fp32" in verdict.describe()


def test_a_lower_precision_that_changes_the_answers_is_rejected_and_says_by_how_much() -> None:
    rng = np.random.default_rng(0)
    reference = [{"OUTPUT0": rng.standard_normal((1, 10)).astype(np.float32)} for _ in range(8)]
    off = [{"OUTPUT0": r["OUTPUT0"] + 0.2} for r in reference]
    verdict = guarding.compare(reference, off, "fp16", tolerance=0.01)
    assert not verdict.accepted
    assert verdict.max_abs_diff == pytest.approx(0.2, rel=1e-5)
    assert "rejected" in verdict.describe()
    broken = [{"OUTPUT0": np.full((1, 10), np.nan, dtype=np.float32)} for _ in reference]
    assert not guarding.compare(reference, broken, "fp16").accepted
    reshaped = [{"OUTPUT0": r["OUTPUT0"].reshape(10)} for r in reference]
    assert not guarding.compare(reference, reshaped, "fp16").accepted


def test_the_guards_sample_is_the_same_every_run() -> None:
    from polyserve_worker.tuning import loadgen

    tensors = (loadgen.Tensor("INPUT0", "FP32", (1, 4)), loadgen.Tensor("IDS", "INT64", (1, 3)))
    first, second = guarding.sample(tensors), guarding.sample(tensors)
    assert len(first) == guarding.SAMPLE_SIZE
    for a, b in zip(first, second, strict=True):
        for (ta, xa), (tb, xb) in zip(a, b, strict=True):
            assert ta == tb and np.array_equal(xa, xb)
    assert first[0][1][1].dtype == np.int64


def test_a_ramp_ends_when_the_slo_is_missed_or_after_windows_in_a_row_without_a_gain() -> None:
    rising = [point(1, 1000, 2), point(2, 1900, 3), point(4, 3000, 5)]
    assert not measuring.ends(rising, 50, patience=1)
    assert measuring.ends([*rising, point(8, 3500, 60)], 50, patience=1)  # over the SLO
    # One window short of the best is tolerated (noise on a shared machine), two are not.
    dip = [*rising, point(8, 2100, 6)]
    assert not measuring.ends(dip, 50, patience=1)
    assert measuring.ends(dip, 50, patience=0)
    assert not measuring.ends([*dip, point(16, 4200, 9)], 50, patience=1)  # it was noise
    assert measuring.ends([*dip, point(16, 3050, 9)], 50, patience=1)  # saturated
