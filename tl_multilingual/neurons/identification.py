"""Language-neuron identification from activation probabilities.

Pure, vectorised tensor functions on ``P = [n_layers, d_mlp, K]`` activation
probabilities, and [`identify()`][tl_multilingual.neurons.identification.identify], which runs them on [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats].

- **LAPE** (Tang et al., ACL 2024): language activation probability entropy.
- **Ternary** (Zhang et al., AAAI-26, Zhang et al. (AAAI-26)): entropy minus ``lambda`` times the
  largest probability, with ``lambda`` found by a binary search; classes
  language-specific, language-related and general.

Ties in a ranking are broken by the lower flat ``(layer, neuron)`` index, so results
are deterministic and reproduce the reference implementations' released masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..errors import IdentificationError, warn
from .classes import LanguageNeurons
from .stats import ActivationStats

__all__ = [
    "identify",
    "activation_bar",
    "lape_entropy",
    "ternary_entropy",
    "lowest",
    "lape",
    "ternary",
    "sweep_lambda",
    "norm_max",
    "METHODS",
]


def _kth_smallest(values: Float[Tensor, " n"], k: int) -> float:
    """The k-th smallest value (1-indexed)."""
    if values.device.type == "cpu":  # numpy's introselect is several times faster here
        return float(np.partition(values.numpy(), k - 1)[k - 1])
    return float(values.kthvalue(k).values)


def activation_bar(probs: Float[Tensor, "layer neuron lang"], ratio: float) -> float:
    """The ``round(ratio * numel)``-th smallest probability (1-indexed), as the references."""
    flat = probs.flatten()
    return _kth_smallest(flat, min(max(round(ratio * flat.numel()), 1), flat.numel()))


def lowest(scores: Float[Tensor, " n"], k: int) -> Int[Tensor, " k"]:
    """Sorted indices of the ``k`` lowest scores; ties go to the lower index."""
    n = scores.numel()
    if k <= 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    if k >= n:
        return torch.arange(n, device=scores.device)
    kth = _kth_smallest(scores, k)
    below = (scores < kth).nonzero().squeeze(1)
    ties = (scores == kth).nonzero().squeeze(1)[: k - below.numel()]
    return torch.cat([below, ties]).sort().values


def _entropy(probs: Tensor, *, if_zero: float) -> Tensor:
    """``-sum_k P'_k log P'_k`` with ``P' = P / sum_k P_k`` (``0 log 0 = 0``); ``if_zero``
    for all-zero neurons. A neuron active in one language scores exactly 0."""
    total = probs.sum(-1, keepdim=True)
    normed = probs / total.clamp_min(torch.finfo(probs.dtype).tiny)
    ent = -torch.special.xlogy(normed, normed).sum(-1)
    return torch.where(total.squeeze(-1) > 0, ent, torch.full_like(ent, if_zero))


def lape_entropy(probs: Float[Tensor, "layer neuron lang"]) -> Float[Tensor, "layer neuron"]:
    """LAPE: ``-sum_k P' log P'`` with ``P' = P / sum_k P`` (an all-zero neuron scores 0)."""
    return _entropy(probs, if_zero=0.0)


def ternary_entropy(probs: Float[Tensor, "layer neuron lang"]) -> Float[Tensor, "layer neuron"]:
    """Zhang et al. (AAAI-26): the entropy of ``P'`` over ``log K`` (an all-zero neuron is uniform: 1)."""
    k_langs = probs.shape[-1]
    return _entropy(probs, if_zero=math.log(k_langs)) / math.log(k_langs)


def norm_max(n_languages: int) -> float:
    """Zhang et al.'s (AAAI-26) normaliser of the max-probability term: ``(sum_{i=1..K} 1/i) / K``."""
    return sum(1.0 / i for i in range(1, n_languages + 1)) / n_languages


@dataclass(frozen=True)
class Selection:
    """Neurons chosen by a method: flat indices and the languages they belong to."""

    selected: Int[Tensor, " n"]
    above: Bool[Tensor, "layer neuron lang"]
    bar: float


def _filtered(scores: Tensor, probs: Tensor, filter_rate: float | None) -> Tensor:
    """LAPE's pre-filter: neurons with no probability above the bar never rank."""
    if filter_rate is None:
        return scores
    bar = activation_bar(probs, filter_rate)
    return scores.masked_fill(~(probs > bar).any(-1), math.inf)


def lape(
    probs: Float[Tensor, "layer neuron lang"],
    *,
    top_rate: float = 0.01,
    bar_ratio: float = 0.95,
    filter_rate: float | None = 0.95,
) -> Selection:
    """LAPE (Tang et al.): the ``round(top_rate * L * H)`` neurons of lowest LAPE
    entropy; each belongs to every language whose probability exceeds the bar."""
    scores = _filtered(lape_entropy(probs), probs, filter_rate).flatten()
    bar = activation_bar(probs, bar_ratio)
    chosen = lowest(scores, round(top_rate * scores.numel()))
    return Selection(chosen, probs > bar, bar)


def ternary(
    probs: Float[Tensor, "layer neuron lang"],
    lam: float,
    *,
    top_rate: float = 0.01,
    bar_ratio: float = 0.95,
    filter_rate: float | None = None,
) -> Selection:
    """Zhang et al. (AAAI-26) for one ``lam``: the lowest ``ent - lam * max_k P / norm_max``."""
    return _TernaryScorer(probs, top_rate, bar_ratio, filter_rate).select(lam)


class _TernaryScorer:
    """Everything of the ternary score that does not depend on lambda, computed once."""

    def __init__(self, probs: Tensor, top_rate: float, bar_ratio: float, filter_rate: float | None):
        k_langs = probs.shape[-1]
        self.ent = _filtered(ternary_entropy(probs), probs, filter_rate).flatten()
        self.peak = (probs.amax(-1) / norm_max(k_langs)).flatten()
        self.bar = activation_bar(probs, bar_ratio)
        self.above = probs > self.bar
        self.n_above = self.above.sum(-1).flatten()
        self.k = round(top_rate * self.ent.numel())
        self.n_languages = k_langs

    def select(self, lam: float) -> Selection:
        return Selection(lowest(self.ent - lam * self.peak, self.k), self.above, self.bar)

    def all_languages(self, lam: float) -> int:
        """Selected neurons above the bar in every language."""
        return int((self.n_above[self.select(lam).selected] == self.n_languages).sum())

    def sweep(self, low: float, high: float, tol: float, max_steps: int) -> tuple[float, str | None]:
        """The largest lambda in ``[low, high]`` (bisection to ``tol``) at which no
        selected neuron is above the bar in all languages, and which bound of the range
        it ended at (``"upper"``, ``"lower"`` or None)."""
        if self.all_languages(high) == 0:
            return high, "upper"
        best = low if self.all_languages(low) == 0 else None
        lo, hi = low, high
        steps = 0
        while hi - lo > tol and steps < max_steps:
            steps += 1
            mid = (lo + hi) / 2.0
            if self.all_languages(mid) == 0:
                best, lo = mid, mid
            else:
                hi = mid
        if best is None:
            raise IdentificationError(
                f"no lambda in [{low}, {high}] keeps every selected neuron out of some language; "
                "pass lam= explicitly"
            )
        return best, ("lower" if best == low else None)


def _warn_bound(
    lam: float, bound: str | None, low: float, high: float, n_languages: int, *, argument: bool = True
) -> None:
    """Say so when the lambda search ended at a bound of its range (``argument``: the
    range was given as identify's ``lam_range``, else as ``low`` and ``high``)."""
    if bound == "upper":
        wider = high + max(high - low, 0.1)
        offer = f"lam_range=({low:g}, {wider:g})" if argument else f"high={wider:g}"
        warn(
            f"the lambda search ended at the upper bound {high:g} of lam_range=({low:g}, {high:g}): even there "
            f"no selected neuron is above the bar in all {n_languages} languages, so the largest such lambda "
            f"may lie above the range; pass {offer} to search further, or lam= to fix it",
        )
    elif bound == "lower":
        warn(
            f"the lambda search ended at the lower bound {low:g} of lam_range=({low:g}, {high:g}): every larger "
            f"lambda tried selects neurons above the bar in all {n_languages} languages, so lambda = {lam:g} "
            "(at 0 the selection ranks by entropy alone); check top_rate and bar_ratio, or widen lam_range "
            "downwards if a lower lambda is meaningful for your scores",
        )


def sweep_lambda(
    probs: Float[Tensor, "layer neuron lang"],
    *,
    top_rate: float = 0.01,
    bar_ratio: float = 0.95,
    filter_rate: float | None = None,
    low: float = 0.0,
    high: float = 0.2,
    tol: float = 1e-3,
    max_steps: int = 64,
) -> float:
    """Zhang et al.'s (AAAI-26) automatic lambda: binary search on ``[low, high]`` for the largest
    lambda at which no selected neuron is above the bar in all K languages.

    Warns (`TLMultilingualWarning`) when the search ends at ``low`` or
    ``high``: the answer may then lie outside the range."""
    lam, bound = _TernaryScorer(probs, top_rate, bar_ratio, filter_rate).sweep(low, high, tol, max_steps)
    _warn_bound(lam, bound, low, high, probs.shape[-1], argument=False)
    return lam


@dataclass(frozen=True)
class _Identified:
    """What one method returns: its selection, its lambda and what to record."""

    selection: Selection
    lam: float | None
    params: dict[str, Any]


def _run_ternary(
    probs: Tensor, *, top_rate: float, bar_ratio: float, filter_rate: float | None, lam: Any,
    lam_range: tuple[float, float], tol: float,
) -> _Identified:
    scorer = _TernaryScorer(probs, top_rate, bar_ratio, filter_rate)
    params: dict[str, Any] = {}
    if lam == "auto":
        low, high = (float(x) for x in lam_range)
        if not low < high:
            raise IdentificationError(f"lam_range must be (low, high) with low < high, got {tuple(lam_range)}")
        chosen, bound = scorer.sweep(low, high, tol, max_steps=64)
        _warn_bound(chosen, bound, low, high, probs.shape[-1])
        params["lam_search"] = {"range": [low, high], "tol": tol, "at_bound": bound}
    elif isinstance(lam, (int, float)) and not isinstance(lam, bool):
        chosen = float(lam)
    else:
        raise IdentificationError(f"lam must be a number or 'auto', got {lam!r}")
    return _Identified(scorer.select(chosen), chosen, params)


def _run_lape(
    probs: Tensor, *, top_rate: float, bar_ratio: float, filter_rate: float | None, lam: Any,
    lam_range: tuple[float, float], tol: float,
) -> _Identified:
    selection = lape(probs, top_rate=top_rate, bar_ratio=bar_ratio, filter_rate=filter_rate)
    n_above = selection.above.flatten(0, 1).sum(-1)[selection.selected]
    none = int((n_above == 0).sum())
    if none:
        warn(
            f"{none} of the {selection.selected.numel()} neurons LAPE selected are above the activation bar "
            f"(bar_ratio={bar_ratio:g}, bar={selection.bar:.4g}) in no language and belong to none; "
            "lower bar_ratio, or pre-filter with filter_rate <= bar_ratio",
        )
    return _Identified(selection, None, {})


@dataclass(frozen=True)
class _Method:
    run: Callable[..., _Identified]
    prefilter: bool  # LAPE's pre-filter on by default (as in the reference implementations)


METHODS: dict[str, _Method] = {
    "ternary": _Method(_run_ternary, prefilter=False),
    "lape": _Method(_run_lape, prefilter=True),
}
"""The identification methods [`identify()`][tl_multilingual.neurons.identification.identify] dispatches to, by name."""

Method = Literal["ternary", "lape"]


def identify(
    stats: ActivationStats,
    method: Method = "ternary",
    *,
    top_rate: float = 0.01,
    lam: float | Literal["auto"] | None = "auto",
    bar_ratio: float = 0.95,
    prefilter: bool | None = None,
    filter_rate: float = 0.95,
    lam_range: tuple[float, float] = (0.0, 0.2),
    tol: float = 1e-3,
) -> LanguageNeurons:
    """Identify language neurons from activation statistics.

    Args:
        stats: activation statistics of at least two languages.
        method: ``"ternary"`` (Zhang et al., AAAI-26) or ``"lape"`` (Tang et al.); the names of
            [`METHODS`][tl_multilingual.neurons.identification.METHODS].
        top_rate: fraction of all neurons selected (both methods select
            ``round(top_rate * n_layers * d_mlp)``).
        lam: Zhang et al.'s (AAAI-26) lambda, or ``"auto"`` for its binary search on ``lam_range``
            with tolerance ``tol``. Ignored by LAPE (None there).
        bar_ratio: the activation bar is the ``bar_ratio`` quantile of all probabilities;
            a neuron belongs to the languages whose probability exceeds it.
        prefilter: LAPE's pre-filter: neurons with no probability above the
            ``filter_rate`` quantile are never selected. Default (None): on for LAPE, off
            for ternary, as in the reference implementations.
        filter_rate: quantile of the pre-filter.
        lam_range: ``(low, high)``, the values of lambda the automatic search tries.
            Lambda weighs the largest language probability against the entropy in the
            ternary score (0: entropy alone; larger values favour neurons strongly
            active in some language); the search returns the largest lambda in the
            range at which no selected neuron is above the bar in every language.
            Zhang et al. (AAAI-26) searches ``(0, 0.2)``. When the search ends at a bound, the answer
            may lie outside: a warning says so and names a wider range to pass.
        tol: the search's tolerance on lambda.

    Returns:
        [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons] with the masks, the lambda, the diagnostics and the
        resolved [`recipe`][tl_multilingual.neurons.classes.LanguageNeurons.recipe] (``identify(other_stats,
        **neurons.recipe)`` repeats the identification with the same lambda).

    Raises:
        IdentificationError: for an unknown method, parameters out of range,
            statistics of fewer than two languages or a language without tokens, or a
            lambda search that finds no admissible lambda.

    Warns:
        TLMultilingualWarning: when the lambda search ends at a bound of ``lam_range``; when LAPE
            selects neurons that are above the bar in no language (they are dropped:
            ``LanguageNeurons.dropped``).
    """
    if not isinstance(stats, ActivationStats):
        raise IdentificationError(f"identify needs ActivationStats, got {type(stats).__name__}")
    if method not in METHODS:
        raise IdentificationError(f"unknown method {method!r}: use one of {tuple(METHODS)}")
    if len(stats.languages) < 2:
        raise IdentificationError("identification compares languages: give statistics of at least two")
    if not 0.0 < top_rate <= 1.0:
        raise IdentificationError(f"top_rate must be in (0, 1], got {top_rate}")
    if not 0.0 < bar_ratio <= 1.0:
        raise IdentificationError(f"bar_ratio must be in (0, 1], got {bar_ratio}")
    try:
        probs = stats.probabilities()
    except Exception as err:  # StatsError: a language without tokens
        raise IdentificationError(str(err)) from err
    spec = METHODS[method]
    use_filter = spec.prefilter if prefilter is None else bool(prefilter)
    rate = filter_rate if use_filter else None
    found = spec.run(probs, top_rate=top_rate, bar_ratio=bar_ratio, filter_rate=rate, lam=lam,
                     lam_range=lam_range, tol=tol)
    params = {"top_rate": top_rate, "bar_ratio": bar_ratio, **found.params, "filter_rate": rate}
    recipe = {
        "method": method, "top_rate": top_rate, "lam": found.lam, "bar_ratio": bar_ratio,
        "prefilter": use_filter, "filter_rate": filter_rate, "lam_range": tuple(lam_range), "tol": tol,
    }
    return LanguageNeurons.from_selection(
        stats.languages,
        found.selection.selected,
        found.selection.above,
        method=method,
        lam=found.lam,
        bar=found.selection.bar,
        params=params,
        source={"model": stats.model, "corpus": stats.corpus, "token_policy": stats.token_policy},
        recipe=recipe,
    )
