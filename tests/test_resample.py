"""The one resampling module, against computations written here: numpy quantiles of
resampled means over the same draws, paired differences, and the coverage of the
intervals on synthetic samples whose true mean is known."""

from __future__ import annotations

import numpy as np
import pytest

from tl_multilingual import resample


def replicate_means(values: np.ndarray, unit_draws: np.ndarray) -> np.ndarray:
    """The mean of each bootstrap sample, one replicate (row of draws) at a time."""
    return np.array([np.nanmean(values[row], axis=0) for row in unit_draws])


def test_draws_are_seeded_unit_indices_with_replacement():
    d = resample.draws(7, 300, seed=5)
    assert d.shape == (300, 7) and d.dtype.kind == "i"
    assert d.min() == 0 and d.max() == 6  # every unit can be drawn, nothing outside
    assert np.array_equal(d, resample.draws(7, 300, seed=5))
    assert not np.array_equal(d, resample.draws(7, 300, seed=6))
    assert any(len(set(row)) < 7 for row in d)  # with replacement: some unit repeats
    generator = np.random.default_rng(5)
    assert np.array_equal(resample.draws(7, 300, generator), d)  # a generator or its seed: the same


def test_percentile_interval_is_the_central_quantile_pair():
    rng = np.random.default_rng(0)
    reps = rng.normal(size=2000)
    for ci in (0.95, 0.9, 0.5):
        low, high = resample.percentile_interval(reps, ci)
        tail = (1 - ci) / 2
        assert low == pytest.approx(np.quantile(reps, tail), abs=1e-12)
        assert high == pytest.approx(np.quantile(reps, 1 - tail), abs=1e-12)
    # A 95% interval holds 95% of the replicates, 2.5% on each side.
    low, high = resample.percentile_interval(reps, 0.95)
    assert np.mean(reps < low) == pytest.approx(0.025, abs=1e-3)
    assert np.mean(reps > high) == pytest.approx(0.025, abs=1e-3)


def test_percentile_interval_ignores_nan_replicates_and_runs_along_an_axis():
    reps = np.array([[1.0, np.nan], [2.0, np.nan], [np.nan, np.nan], [4.0, np.nan]])
    low, high = resample.percentile_interval(reps, 0.5, axis=0)
    assert low[0] == pytest.approx(np.quantile([1.0, 2.0, 4.0], 0.25))
    assert high[0] == pytest.approx(np.quantile([1.0, 2.0, 4.0], 0.75))
    assert np.isnan(low[1]) and np.isnan(high[1])  # no finite replicate: NaN
    by_row = resample.percentile_interval(reps[:, :1].T, 0.5, axis=1)
    assert by_row[0][0] == pytest.approx(low[0]) and by_row[1][0] == pytest.approx(high[0])
    for bad in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match="ci"):
            resample.percentile_interval(reps, bad)


def test_mean_interval_is_the_quantiles_of_the_resampled_means():
    rng = np.random.default_rng(1)
    values = rng.normal(size=100)
    d = resample.draws(100, 2000, seed=3)
    estimate, low, high = resample.mean_interval(values, unit_draws=d, ci=0.95)
    means = replicate_means(values, d)
    assert estimate == pytest.approx(values.mean(), abs=1e-12)
    assert low == pytest.approx(np.quantile(means, 0.025), abs=1e-12)
    assert high == pytest.approx(np.quantile(means, 0.975), abs=1e-12)
    # With a seed instead of draws: the draws of that seed.
    assert resample.mean_interval(values, n_boot=2000, seed=3) == (estimate, low, high)
    # The interval of a mean shrinks like 1/sqrt(n): about 2 * 1.96 / sqrt(100) wide here.
    assert high - low == pytest.approx(2 * 1.96 * values.std() / 10, rel=0.1)


def test_trailing_axes_are_summarised_one_by_one_with_the_same_draws():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(40, 3, 2)) + np.arange(6).reshape(3, 2)
    d = resample.draws(40, 500, seed=0)
    estimate, low, high = resample.mean_interval(values, unit_draws=d, ci=0.9)
    assert estimate.shape == low.shape == high.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            e, lo, hi = resample.mean_interval(values[:, i, j], unit_draws=d, ci=0.9)
            assert (estimate[i, j], low[i, j], high[i, j]) == pytest.approx((e, lo, hi), abs=1e-12)
    means = replicate_means(values, d)  # [n_boot, 3, 2]
    assert low == pytest.approx(np.quantile(means, 0.05, axis=0), abs=1e-12)


def test_a_paired_interval_resamples_the_per_unit_differences():
    rng = np.random.default_rng(4)
    level = rng.normal(0, 5, size=60)  # large unit-to-unit variation, shared by both conditions
    base = level + rng.normal(0, 0.1, size=60)
    hit = level + 0.3 + rng.normal(0, 0.1, size=60)
    d = resample.draws(60, 2000, seed=9)
    change, low, high = resample.mean_interval(hit, baseline=base, unit_draws=d)
    diffs = replicate_means(hit, d) - replicate_means(base, d)  # the same units in both means
    assert change == pytest.approx((hit - base).mean(), abs=1e-12)
    assert (low, high) == pytest.approx(
        (np.quantile(diffs, 0.025), np.quantile(diffs, 0.975)), abs=1e-12
    )
    assert 0.2 < low < 0.3 < high < 0.4  # the shared variation cancels
    # Drawing the baseline's units apart from the condition's would not cancel it.
    other = resample.draws(60, 2000, seed=10)
    unpaired = replicate_means(hit, d) - replicate_means(base, other)
    assert np.quantile(unpaired, 0.975) - np.quantile(unpaired, 0.025) > 10 * (high - low)
    with pytest.raises(ValueError, match="baseline shape"):
        resample.mean_interval(hit, baseline=base[:-1])


def test_nan_units_are_left_out_of_the_estimate_and_of_every_replicate():
    values = np.array([1.0, np.nan, 3.0, 5.0, np.nan, 7.0])
    d = resample.draws(6, 400, seed=0)
    estimate, low, high = resample.mean_interval(values, unit_draws=d)
    assert estimate == pytest.approx(4.0)
    means = np.array(
        [np.nanmean(values[row]) if np.isfinite(values[row]).any() else np.nan for row in d]
    )
    assert (low, high) == pytest.approx(
        (np.nanquantile(means, 0.025), np.nanquantile(means, 0.975))
    )
    assert all(np.isnan(x) for x in resample.mean_interval(np.full(5, np.nan), n_boot=50))
    assert all(np.isnan(x) for x in resample.mean_interval(np.zeros(0), n_boot=50))


def coverage(
    ci: float, n_samples: int = 1000, n: int = 30, n_boot: int = 500
) -> tuple[float, float]:
    """Share of seeded standard-normal samples whose interval covers the true mean 0,
    and the mean width of the intervals."""
    rng = np.random.default_rng(12345)
    covered, widths = 0, []
    for _ in range(n_samples):
        sample = rng.normal(size=n)
        _, low, high = resample.mean_interval(sample, n_boot=n_boot, ci=ci, seed=rng)
        covered += low <= 0.0 <= high
        widths.append(high - low)
    return covered / n_samples, float(np.mean(widths))


def test_a_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time():
    cover95, width95 = coverage(0.95)
    cover90, width90 = coverage(0.90)
    # Percentile intervals of a mean of 30 normal values cover a little less than nominal
    # (about 93% and 88%); the standard error of each share is about 0.008.
    assert 0.91 <= cover95 <= 0.97
    assert 0.85 <= cover90 <= 0.92
    assert cover90 < cover95
    # A 90% interval is narrower, by the ratio of the normal quantiles 1.645 / 1.960.
    assert width90 / width95 == pytest.approx(1.645 / 1.960, rel=0.04)
    assert width95 == pytest.approx(2 * 1.96 / np.sqrt(30), rel=0.08)


def test_an_interval_of_a_null_effect_is_centred_on_zero():
    """On 100 standard-normal values (a null effect) the interval straddles 0 and
    is about 4 standard errors wide."""
    values = np.random.default_rng(0).normal(size=100)
    estimate, low, high = resample.mean_interval(values, n_boot=1000, seed=0)
    assert low < 0.0 < high
    assert low < estimate < high
    assert high - low == pytest.approx(2 * 1.96 * values.std(ddof=1) / 10, rel=0.1)


def test_few_units_cautions_below_min_units():
    assert resample.MIN_UNITS == 10
    assert resample.few_units(9) and not resample.few_units(10) and resample.few_units(0)
