"""Exact segmentation of layers into four contiguous stages, and the null tests of a
fit, in pure numpy.

The fit: the boundaries ``0 < b1 < b2 < b3 < n_layers`` minimise the squared error of
a piecewise-constant fit of the (standardised) feature vectors. The optimum is found
exactly by dynamic programming over segment costs (Bellman, 1961), ``O(K L^2)`` for
``K`` segments of ``L`` layers ([`segment()`][tl_multilingual.stages.segmentation.segment]).

Constraints on the stage means (Zhang et al.'s signatures, see
[`tl_multilingual.stages.signatures`][tl_multilingual.stages.signatures]) are met exactly by a bounded search:
with the middle boundary ``b2`` fixed, the cost splits into a part in ``b1`` and a
part in ``b3``, and every rule compares segment means of the two parts, so each
``b2`` is an ``O(L^2)`` table. Middle boundaries are visited in the order of the
dynamic-programming lower bound and the search stops once that bound exceeds the
best cost found. An exhaustive ``O(L^3)`` reference gives the same boundaries (kept
for the tests and ``benchmarks/stage_segmentation.py``).

Fit quality ([`FitQuality`][tl_multilingual.stages.stage_map.FitQuality]): the share of the features' variation across
layers the four stage means explain; a p-value against the best four-stage fit to
layer-shuffled features (small when the features change along the layers in a way
four contiguous stages capture better than chance); and p-values that four stages
explain more than three (Wendler et al.'s three phases) or two, against fits to data
simulated from the smaller fit with its residuals shuffled across layers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import TLMultilingualError
from .stage_map import FitQuality

__all__ = ["segment", "check_layer_count"]

MIN_LAYERS = 4  # one layer per stage at the least


def check_layer_count(n_layers: int) -> None:
    """Refuse a model too shallow for the four stages.

    Raises:
        TLMultilingualError: fewer than four layers.
    """
    if n_layers < MIN_LAYERS:
        raise TLMultilingualError(f"four stages need at least four layers, got {n_layers}")


def _costs(x: np.ndarray, *, gram: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Segment costs and prefix sums of features ``[R, L, F]``.

    Returns ``cost[r, i, j]``, the squared error of one constant fitted to layers
    ``[i, j)`` (inf where ``j <= i``), and the prefix sums ``[R, L + 1, F]``. With
    ``gram``, ``|S_j - S_i|^2`` comes from the Gram matrix of the prefix sums (faster,
    rounding-level differences: used for the null draws only).
    """
    n_rep, n, _ = x.shape
    sums = np.zeros((n_rep, n + 1, x.shape[2]))
    sums[:, 1:] = np.cumsum(x, 1)
    squares = np.zeros((n_rep, n + 1))
    squares[:, 1:] = np.cumsum((x**2).sum(-1), 1)
    length = np.arange(n + 1)[None, :] - np.arange(n + 1)[:, None]  # [i, j] = j - i
    if gram:
        norms = (sums**2).sum(-1)
        between = norms[:, None, :] + norms[:, :, None] - 2.0 * np.einsum("rif,rjf->rij", sums, sums)
    else:
        between = ((sums[:, None, :, :] - sums[:, :, None, :]) ** 2).sum(-1)  # |S_j - S_i|^2
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (squares[:, None, :] - squares[:, :, None]) - between / length
    return np.where(length > 0, np.maximum(cost, 0.0), np.inf), sums


def _dp(cost: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact optimal ``k``-segmentation from segment costs ``[R, L + 1, L + 1]`` in
    ``O(k L^2)`` per replicate (Bellman, 1961). Returns the cost ``[R]`` and the
    boundaries ``[R, k - 1]``."""
    n_rep, n1, _ = cost.shape
    n = n1 - 1
    best = cost[:, 0, :]  # best cost of [0, j) in one segment
    back = []
    for _ in range(k - 1):
        total = best[:, :, None] + cost  # [R, i, j]: best of [0, i), then segment [i, j)
        arg = np.argmin(total, axis=1)
        best = np.take_along_axis(total, arg[:, None, :], 1)[:, 0]
        back.append(arg)
    rows = np.arange(n_rep)
    end = np.full(n_rep, n)
    bounds = []
    for arg in reversed(back):
        end = arg[rows, end]
        bounds.append(end)
    bounds = np.stack(bounds[::-1], 1) if bounds else np.zeros((n_rep, 0), int)
    return best[:, n], bounds


def _means(sums: np.ndarray, column: int) -> np.ndarray:
    """Mean of one feature over every segment ``[i, j)``: ``[L + 1, L + 1]``."""
    s = sums[:, column]
    length = np.arange(len(s))[None, :] - np.arange(len(s))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return (s[None, :] - s[:, None]) / length


_EPS = 1e-9  # equal stage means (standardised features) meet a rule despite rounding


def _meets(means: Sequence[np.ndarray], rules: Sequence[str], b1: Any, b2: Any, b3: Any, n: int) -> Any:
    """Whether boundaries meet every (segment-mean) rule; broadcasts over arrays."""
    ok = True
    for m, rule in zip(means, rules):
        m1, m2, m3, m4 = m[0, b1], m[b1, b2], m[b2, b3], m[b3, n]
        if rule == "min_second":
            ok = ok & (m2 <= m1 + _EPS) & (m2 <= m3 + _EPS)
        elif rule == "max_last":
            ok = ok & (m4 + _EPS >= m1) & (m4 + _EPS >= m2) & (m4 + _EPS >= m3)
        elif rule == "max_second":
            ok = ok & (m2 + _EPS >= m1) & (m2 + _EPS >= m3) & (m2 + _EPS >= m4)
        else:
            raise TLMultilingualError(f"unknown constraint {rule!r}")
    return ok


def _constrained(cost: np.ndarray, sums: np.ndarray, constraints: Sequence[tuple[int, str]],
                 start: tuple[int, int, int]) -> tuple[tuple[int, int, int] | None, float]:
    """The best four-segmentation meeting ``constraints``, exactly, for one replicate.

    With the middle boundary ``b2`` fixed, the cost splits into a part in ``b1`` and a
    part in ``b3``, and every rule compares segment means of the two parts: each
    ``b2`` is an ``O(L^2)`` table. Middle boundaries are visited in the order of the
    dynamic-programming lower bound ``min_b1 + min_b3`` and the search stops once that
    bound exceeds the best cost found, so only the few ``b2`` near the optimum are
    visited unless the constraints push it far from the unconstrained one.
    """
    n = cost.shape[0] - 1
    means = [_means(sums, col) for col, _ in constraints]
    rules = [rule for _, rule in constraints]
    if bool(_meets(means, rules, *start, n)):
        return start, float(cost[0, start[0]] + cost[start[0], start[1]] + cost[start[1], start[2]] + cost[start[2], n])
    left = cost[0, :, None] + cost  # [b1, b2]: segments [0, b1) and [b1, b2)
    right = cost + cost[:, n][None, :]  # [b2, b3]: segments [b2, b3) and [b3, n)
    bound = left.min(0) + right.min(1)
    best, found = np.inf, None
    for b2 in np.argsort(bound, kind="stable"):
        if not np.isfinite(bound[b2]) or bound[b2] > best:
            break
        b1 = np.arange(1, b2)[:, None]
        b3 = np.arange(b2 + 1, n)[None, :]
        if b1.size == 0 or b3.size == 0:
            continue
        total = np.where(_meets(means, rules, b1, b2, b3, n), left[b1, b2] + right[b2, b3], np.inf)
        i, j = np.unravel_index(np.argmin(total), total.shape)
        value = total[i, j]
        candidate = (int(b1[i, 0]), int(b2), int(b3[0, j]))
        if value < best or (value == best and found is not None and candidate < found):
            best, found = float(value), candidate
    return found, best


def _exhaustive(features: np.ndarray, constraints: Sequence[tuple[int, str]] = ()) -> tuple[tuple[int, int, int], bool]:
    """Reference: every ``(b1, b2, b3)`` tried, ``O(L^3)``. Kept for the tests and the
    benchmark; [`segment()`][tl_multilingual.stages.segmentation.segment] returns the same boundaries."""
    x = np.asarray(features, dtype=float)
    n = len(x)
    sums = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, 0)])
    squares = np.concatenate([[0.0], np.cumsum((x**2).sum(1))])
    combos = np.array(list(itertools.combinations(range(1, n), 3)))
    edges = np.column_stack([np.zeros(len(combos), int), combos, np.full(len(combos), n)])
    lo, hi = edges[:, :-1], edges[:, 1:]
    seg_sum = sums[hi] - sums[lo]
    length = (hi - lo)[..., None]
    cost = (squares[hi] - squares[lo]).sum(1) - ((seg_sum**2) / length).sum((1, 2))
    means = seg_sum / length
    ok = np.ones(len(combos), bool)
    for column, rule in constraints:
        m = means[:, :, column]
        if rule == "min_second":
            ok &= (m[:, 1] <= m[:, 0] + _EPS) & (m[:, 1] <= m[:, 2] + _EPS)
        elif rule == "max_last":
            ok &= m[:, 3] + _EPS >= m.max(1)
        elif rule == "max_second":
            ok &= m[:, 1] + _EPS >= m.max(1)
        else:
            raise TLMultilingualError(f"unknown constraint {rule!r}")
    met = bool(ok.any())
    best = np.argmin(np.where(ok, cost, np.inf)) if met else np.argmin(cost)
    return tuple(int(b) for b in combos[best]), met  # type: ignore[return-value]


def segment(
    features: np.ndarray,
    constraints: Sequence[tuple[int, str]] = (),
) -> tuple[tuple[int, int, int], bool]:
    """Optimal four-segment piecewise-constant fit of ``features`` ``[n_layers, n_features]``.

    Exact: dynamic programming over segment costs (``O(L^2)`` for the unconstrained
    optimum); when it breaks a constraint, the best segmentation meeting every
    constraint is found exactly by a bounded search over the middle boundary (see
    the module docstring; ``O(L^2)`` per middle boundary visited).

    Args:
        features: ``[n_layers, n_features]``.
        constraints: ``(feature column, rule)`` with rule ``"min_second"`` (segment 2
            has the smallest mean of segments 1-3), ``"max_last"`` (segment 4 has the
            largest mean) or ``"max_second"`` (segment 2 has the largest mean).

    Returns:
        The boundaries and whether the constraints could be met (if not, the
        unconstrained optimum).

    Raises:
        TLMultilingualError: with fewer than four layers or an unknown rule.
    """
    x = np.asarray(features, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    check_layer_count(len(x))
    for _, rule in constraints:
        if rule not in ("min_second", "max_last", "max_second"):
            raise TLMultilingualError(f"unknown constraint {rule!r}")
    cost, sums = _costs(x[None])
    _, bounds = _dp(cost, 4)
    free = tuple(int(b) for b in bounds[0])
    if not constraints:
        return free, True  # type: ignore[return-value]
    found, _ = _constrained(cost[0], sums[0], constraints, free)  # type: ignore[arg-type]
    return (found, True) if found is not None else (free, False)  # type: ignore[return-value]


def _explained(cost: np.ndarray, boundaries: Sequence[int]) -> float:
    n = cost.shape[0] - 1
    edges = (0, *boundaries, n)
    total = cost[0, n]
    if not total > 0:
        return float("nan")
    sse = sum(cost[edges[k], edges[k + 1]] for k in range(len(edges) - 1))
    return float(1.0 - sse / total)


def _best_costs(x: np.ndarray, k: int, chunk_cells: int = 4_000_000) -> np.ndarray:
    """Best ``k``-segment cost of every replicate ``[R, L, F]``, in chunks."""
    n_rep, n, f = x.shape
    step = max(1, chunk_cells // (n + 1) ** 2)
    out = []
    for lo in range(0, n_rep, step):
        cost, _ = _costs(x[lo : lo + step], gram=True)
        out.append(_dp(cost, k)[0])
    return np.concatenate(out) if out else np.zeros(0)


def _fitted(x: np.ndarray, boundaries: Sequence[int]) -> np.ndarray:
    edges = (0, *boundaries, len(x))
    out = np.empty_like(x)
    for k in range(len(edges) - 1):
        out[edges[k] : edges[k + 1]] = x[edges[k] : edges[k + 1]].mean(0)
    return out


def _quality(x: np.ndarray, boundaries: Sequence[int], n_null: int, seed: int) -> FitQuality:
    """Fit quality of a four-stage map of standardised features ``x`` ``[L, F]``."""
    cost, _ = _costs(x[None])
    c = cost[0]
    total = c[0, -1]
    by_k, bounds_k = {}, {}
    for k in (2, 3, 4):
        value, bounds = _dp(cost, k)
        by_k[k] = float(1.0 - value[0] / total) if total > 0 else float("nan")
        bounds_k[k] = tuple(int(b) for b in bounds[0])
    explained = _explained(c, boundaries)
    if not total > 0 or n_null <= 0:
        nan = float("nan")
        return FitQuality(explained, by_k[4], 1.0 if not total > 0 else nan, by_k, {3: nan, 2: nan}, 0)
    rng = np.random.default_rng(seed)
    n = len(x)
    order = rng.permuted(np.tile(np.arange(n), (n_null, 1)), axis=1)
    shuffled = x[order]  # [n_null, L, F]
    null = 1.0 - _best_costs(shuffled, 4) / total  # shuffling keeps the total sum of squares
    p_value = float((1 + np.sum(null >= explained - 1e-12)) / (1 + n_null))
    beats = {}
    sse4 = total * (1 - by_k[4])
    for k in (3, 2):
        fitted = _fitted(x, bounds_k[k])
        resid = x - fitted
        observed = 1.0 - sse4 / max(total * (1 - by_k[k]), 1e-300)
        order = rng.permuted(np.tile(np.arange(n), (n_null, 1)), axis=1)
        simulated = fitted[None] + resid[order]
        gain = 1.0 - _best_costs(simulated, 4) / np.maximum(_best_costs(simulated, k), 1e-300)
        beats[k] = float((1 + np.sum(gain >= observed - 1e-12)) / (1 + n_null))
    return FitQuality(explained, by_k[4], p_value, by_k, beats, n_null)
