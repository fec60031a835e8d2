"""Resampling: every interval the library reports comes from here.

The experiments of this library measure a quantity per *unit* (a text, an item, a
prompt) and report its mean over units with a percentile bootstrap interval
(Efron & Tibshirani, 1993, ch. 13). When a condition is compared with a baseline
measured on the same units (a deactivated against the clean model, a patched
against the unpatched run) the bootstrap is *paired*: each replicate draws one set
of units and takes the mean change over exactly those units, so unit-to-unit
variation that both conditions share cancels.

NaN policy, stated once for the whole library: a unit whose value is NaN has no
defined value (an empty text, a prompt whose answer has no token) and is left out
of the mean it would enter, in the point estimate and in every replicate alike.
A replicate drawn only from NaN units is NaN and is ignored by the percentiles; an
interval with no finite replicate is NaN.

Intervals from few units are wide and themselves uncertain: [`MIN_UNITS`][tl_multilingual.resample.MIN_UNITS] is
the number of units below which reports caution the reader (see
[`few_units()`][tl_multilingual.resample.few_units]).

Percentile intervals are used rather than BCa: the quantities here are means of
bounded per-unit values with at most a few hundred units, where the two agree to
well within the replicate noise, and percentiles stay well defined with NaN units
and with the tiny samples of tutorials, where BCa's jackknife acceleration is not.

Example:
    >>> values = np.array([0.1, 0.3, 0.2, 0.5])
    >>> estimate, low, high = mean_interval(values, n_boot=200, seed=0)
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["MIN_UNITS", "draws", "percentile_interval", "mean_interval", "few_units"]

MIN_UNITS = 10
"""Intervals from fewer units than this carry a caution in tables and reports."""


def draws(n_units: int, n_boot: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """Bootstrap draws of unit indices.

    Args:
        n_units: number of units (texts, items, prompts) to resample.
        n_boot: number of replicates.
        seed: seed or generator; the same seed gives the same draws.

    Returns:
        Integer array ``[n_boot, n_units]`` of unit indices drawn with replacement.
        Share one draw between quantities that must be paired.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.integers(0, max(n_units, 1), size=(n_boot, n_units))


def percentile_interval(
    replicates: np.ndarray, ci: float = 0.95, axis: int = 0
) -> tuple[np.ndarray | float, np.ndarray | float]:
    """The central ``ci`` percentile interval of bootstrap replicates, ignoring NaN.

    Args:
        replicates: replicate values; replicates run along ``axis``.
        ci: coverage, in (0, 1).
        axis: the replicate axis.

    Returns:
        ``(low, high)``, each with ``axis`` removed (floats for a 1-D input). NaN where
        no replicate is finite.
    """
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    values = np.asarray(replicates, dtype=float)
    alpha = (1.0 - ci) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as documented
        low, high = np.nanquantile(values, [alpha, 1.0 - alpha], axis=axis)
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


def mean_interval(
    values: np.ndarray,
    *,
    baseline: np.ndarray | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int | np.random.Generator = 0,
    unit_draws: np.ndarray | None = None,
) -> tuple[np.ndarray | float, np.ndarray | float, np.ndarray | float]:
    """Mean over units with a (paired) percentile bootstrap interval.

    Args:
        values: per-unit values, units along axis 0 (``[n_units, ...]``); any trailing
            axes (layers, languages) are summarised independently, with the same draws.
        baseline: per-unit values of the baseline condition on the same units, same
            shape as ``values``; when given, the estimate is the mean *change*
            ``values - baseline`` and its interval is paired.
        n_boot: bootstrap replicates.
        ci: coverage of the interval.
        seed: seed or generator for the draws (ignored when ``unit_draws`` is given).
        unit_draws: precomputed draws ``[n_boot, n_units]`` from [`draws()`][tl_multilingual.resample.draws], to pair
            several quantities over the same replicates.

    Returns:
        ``(estimate, low, high)``: NaN-ignoring mean over units and its interval,
        floats for 1-D input, else arrays of the trailing shape.

    Raises:
        ValueError: if ``baseline`` does not match ``values`` in shape.
    """
    data = np.asarray(values, dtype=float)
    if baseline is not None:
        base = np.asarray(baseline, dtype=float)
        if base.shape != data.shape:
            raise ValueError(f"baseline shape {base.shape} differs from values shape {data.shape}")
        data = data - base
    n_units = data.shape[0]
    index = unit_draws if unit_draws is not None else draws(n_units, n_boot, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN policy: NaN units are left out
        estimate = np.nanmean(data, axis=0) if n_units else np.full(data.shape[1:], np.nan)
        replicates = np.nanmean(data[index], axis=1) if n_units else np.full((1, *data.shape[1:]), np.nan)
    low, high = percentile_interval(replicates, ci, axis=0)
    if np.ndim(estimate) == 0:
        return float(estimate), low, high
    return estimate, low, high


def few_units(n_units: int) -> bool:
    """Whether an interval from ``n_units`` units deserves a caution (fewer than
    [`MIN_UNITS`][tl_multilingual.resample.MIN_UNITS])."""
    return n_units < MIN_UNITS
