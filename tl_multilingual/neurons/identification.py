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
from dataclasses import dataclass, field
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
    "LAMBDA_GRID",
    "norm_max",
    "METHODS",
    "Method",
    "IdentificationMethod",
    "Parameter",
    "Identified",
    "Selection",
    "identify_replicate",
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
    """Neurons chosen by a method.

    Attributes:
        selected: flat indices (``layer * d_mlp + neuron``) of the chosen neurons, sorted.
        above: ``[n_layers, d_mlp, K]``, whether each neuron's probability in each
            language exceeds the bar (a chosen neuron belongs to those languages).
        bar: the activation bar.
    """

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
        """Selected neurons above the bar in every language (``lam=inf``: the selection
        by the largest probability alone, the limit of a large lambda)."""
        if math.isinf(lam):
            selected = lowest(-self.peak, self.k)
        else:
            selected = self.select(lam).selected
        return int((self.n_above[selected] == self.n_languages).sum())

    def binds_above(self, high: float) -> float | None:
        """The first lambda above ``high`` at which Zhang et al.'s criterion binds (some
        selected neuron is above the bar in every language), trying ``high * 2**j`` for
        ``j = 1..PROBES`` and then the limit of ranking by the largest probability alone
        (returned as ``inf``); None when it never binds: the data do not identify lambda."""
        if not bool((self.n_above == self.n_languages).any()):
            return None  # no neuron at all is above the bar in every language
        start = high if high > 0 else 0.1
        for j in range(1, _PROBES + 1):
            lam = start * 2.0**j
            if self.all_languages(lam) > 0:
                return lam
        return math.inf if self.all_languages(math.inf) > 0 else None

    def counts(self, lam: float, languages: Any) -> dict[str, int]:
        """Class counts of the selection at ``lam`` (selected, specific, related,
        general, dropped)."""
        chosen = self.select(lam)
        neurons = LanguageNeurons.from_selection(languages, chosen.selected, chosen.above,
                                                 method="ternary")
        return {"selected": int(chosen.selected.numel()), "specific": neurons.specific().count(),
                "related": neurons.related().count(), "general": neurons.general().count(),
                "dropped": neurons.dropped}

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


_PROBES = 12  # doublings of the upper bound tried before the large-lambda limit

LAMBDA_GRID = (0.0, 0.05, 0.1, 0.2, 0.4, 1.0, 2.0)
"""The lambdas at which `identify` records the class counts (with the lambda it chose)
when the data do not identify lambda: `LanguageNeurons.lambda_sensitivity()`."""


def _warn_bound(
    lam: float, bound: str | None, low: float, high: float, n_languages: int, *,
    argument: bool = True, binds: float | None = None,
) -> None:
    """Say so when the lambda search ended at a bound of its range (``argument``: the
    range was given as identify's ``lam_range``, else as ``low`` and ``high``; ``binds``:
    where the criterion binds above the range, or None where it never does)."""
    if bound == "upper" and binds is None:
        warn(
            f"the data do not identify lambda: no selected neuron is above the bar in all "
            f"{n_languages} languages at any lambda (tried up to {high * 2.0**_PROBES:g} and the "
            "limit of ranking by the largest probability alone), so Zhang et al.'s (AAAI-26) "
            "criterion never binds and no wider range would change that; lambda = "
            f"{lam:g}, the upper bound of the range (the default rule). How the classes move "
            "with lambda: LanguageNeurons.lambda_sensitivity()",
        )
    elif bound == "upper":
        top = binds if math.isfinite(binds) else high * 2.0**_PROBES
        offer = f"lam_range=({low:g}, {top:g})" if argument else f"high={top:g}"
        where = (f"it binds at lambda = {binds:g}" if math.isfinite(binds)
                 else "it binds only when neurons are ranked by their largest probability alone")
        warn(
            f"the lambda search ended at the upper bound {high:g} of lam_range=({low:g}, "
            f"{high:g}): there no selected neuron is above the bar in all {n_languages} "
            f"languages, but {where}, so the largest such lambda lies above the range; pass "
            f"{offer} to find it, or lam= to fix it",
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
    scorer = _TernaryScorer(probs, top_rate, bar_ratio, filter_rate)
    lam, bound = scorer.sweep(low, high, tol, max_steps)
    binds = scorer.binds_above(high) if bound == "upper" else None
    _warn_bound(lam, bound, low, high, probs.shape[-1], argument=False, binds=binds)
    return lam


@dataclass(frozen=True)
class Identified:
    """What a method's ``run`` returns.

    Attributes:
        selection: the neurons it chose and the languages above the bar.
        lam: its lambda (None for a method without one).
        params: what to record in `LanguageNeurons.params` (the parameters that shape
            the selection, the lambda search).
    """

    selection: Selection
    lam: float | None
    params: dict[str, Any]


def _fraction(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0
    return None if ok else "must be in (0, 1]"


def _lambda(value: Any) -> str | None:
    ok = value == "auto" or (isinstance(value, (int, float)) and not isinstance(value, bool))
    return None if ok else "must be a number or 'auto'"


def _range(value: Any) -> str | None:
    try:
        low, high = (float(x) for x in value)
    except (TypeError, ValueError):
        return "must be (low, high)"
    return None if low < high else "must be (low, high) with low < high"


@dataclass(frozen=True)
class Parameter:
    """One parameter of an identification method.

    Attributes:
        name: the keyword of [`identify()`][tl_multilingual.neurons.identification.identify].
        default: its value when not given.
        doc: what it means.
        check: ``check(value)`` -> what is wrong with a value, or None when it is valid.
    """

    name: str
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class IdentificationMethod:
    """An identification method, as [`identify()`][tl_multilingual.neurons.identification.identify] runs it.

    Attributes:
        name: its name (``method=`` of `identify`).
        run: ``run(probs, **params)`` on activation probabilities ``[n_layers, d_mlp, K]``,
            with every declared parameter resolved.
        parameters: what it takes, with defaults and meanings.
        has_lambda: whether it weighs a lambda (found by a search or given); its
            neurons then carry it (`LanguageNeurons.lam`), and a comparison of two
            checkpoints can reuse one model's lambda for the other.
        reference: the paper it implements.
    """

    name: str
    run: Callable[..., Identified]
    parameters: tuple[Parameter, ...]
    has_lambda: bool
    reference: str

    def defaults(self) -> dict[str, Any]:
        """Every parameter's default."""
        return {p.name: p.default for p in self.parameters}

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """The method's parameters: its defaults, overridden by ``given``.

        Raises:
            IdentificationError: a parameter the method does not take (naming the
                method that does, if any), or a value out of range.
        """
        own = {p.name: p for p in self.parameters}
        for name in given:
            if name not in own:
                owners = [m.name for m in METHODS.values()
                          if any(p.name == name for p in m.parameters)]
                where = (f"it is a parameter of {' and '.join(repr(o) for o in owners)}" if owners
                         else "no identification method takes it")
                raise IdentificationError(f"method {self.name!r} takes no parameter {name!r}: "
                                          f"{where}; {self.name!r} takes {tuple(own)}")
        values = {**self.defaults(), **given}
        for name, value in values.items():
            problem = own[name].check(value) if own[name].check is not None else None
            if problem:
                raise IdentificationError(f"{name} {problem}, got {value!r}")
        return values


def _recorded(top_rate: float, bar_ratio: float, prefilter: bool, filter_rate: float
              ) -> dict[str, Any]:
    """What the two reference methods record in `LanguageNeurons.params` (``filter_rate``
    None when there was no pre-filter)."""
    rate = filter_rate if prefilter else None
    return {"top_rate": top_rate, "bar_ratio": bar_ratio, "filter_rate": rate}


def _run_ternary(
    probs: Tensor, *, top_rate: float, bar_ratio: float, lam: Any, lam_range: tuple[float, float],
    tol: float, prefilter: bool, filter_rate: float,
) -> Identified:
    scorer = _TernaryScorer(probs, top_rate, bar_ratio, filter_rate if prefilter else None)
    params = _recorded(top_rate, bar_ratio, prefilter, filter_rate)
    if lam == "auto":
        low, high = (float(x) for x in lam_range)
        chosen, bound = scorer.sweep(low, high, tol, max_steps=64)
        binds = scorer.binds_above(high) if bound == "upper" else None
        _warn_bound(chosen, bound, low, high, probs.shape[-1], binds=binds)
        identified = not (bound == "upper" and binds is None)
        params["lam_search"] = {"range": [low, high], "tol": tol, "at_bound": bound,
                                "identified": identified,
                                "binds_at": (binds if binds is not None and math.isfinite(binds)
                                             else None)}
        if not identified:
            languages = [str(k) for k in range(probs.shape[-1])]
            grid = sorted({*LAMBDA_GRID, chosen})
            params["lam_search"]["sensitivity"] = [{"lambda": g, **scorer.counts(g, languages)}
                                                   for g in grid]
    else:
        chosen = float(lam)
    return Identified(scorer.select(chosen), chosen, params)


def _run_lape(
    probs: Tensor, *, top_rate: float, bar_ratio: float, prefilter: bool, filter_rate: float,
) -> Identified:
    selection = lape(probs, top_rate=top_rate, bar_ratio=bar_ratio,
                     filter_rate=filter_rate if prefilter else None)
    n_above = selection.above.flatten(0, 1).sum(-1)[selection.selected]
    none = int((n_above == 0).sum())
    if none:
        warn(
            f"{none} of the {selection.selected.numel()} neurons LAPE selected are above the activation bar "
            f"(bar_ratio={bar_ratio:g}, bar={selection.bar:.4g}) in no language and belong to none; "
            "lower bar_ratio, or pre-filter with filter_rate <= bar_ratio",
        )
    return Identified(selection, None, _recorded(top_rate, bar_ratio, prefilter, filter_rate))


_TOP_RATE = Parameter("top_rate", 0.01,
                      "fraction of all neurons selected: ``round(top_rate * n_layers * d_mlp)``",
                      _fraction)
_BAR_RATIO = Parameter("bar_ratio", 0.95,
                       "the activation bar is the ``bar_ratio`` quantile of all probabilities; a "
                       "neuron belongs to the languages whose probability exceeds it", _fraction)
_FILTER_RATE = Parameter("filter_rate", 0.95, "quantile of the pre-filter", _fraction)

METHODS: dict[str, IdentificationMethod] = {
    "ternary": IdentificationMethod(
        "ternary", _run_ternary,
        (_TOP_RATE, _BAR_RATIO,
         Parameter("lam", "auto", "lambda, or ``\"auto\"`` for the binary search on ``lam_range`` "
                   "with tolerance ``tol``", _lambda),
         Parameter("lam_range", (0.0, 0.2),
                   "``(low, high)``, the lambdas the automatic search tries", _range),
         Parameter("tol", 1e-3, "the search's tolerance on lambda"),
         Parameter("prefilter", False, "LAPE's pre-filter: neurons with no probability above the "
                   "``filter_rate`` quantile are never selected (off, as in the reference "
                   "implementation)"),
         _FILTER_RATE),
        has_lambda=True, reference="Zhang et al. (AAAI-26)",
    ),
    "lape": IdentificationMethod(
        "lape", _run_lape,
        (_TOP_RATE, _BAR_RATIO,
         Parameter("prefilter", True, "neurons with no probability above the ``filter_rate`` "
                   "quantile are never selected (on, as in the reference implementation)"),
         _FILTER_RATE),
        has_lambda=False, reference="Tang et al. (ACL 2024)",
    ),
}
"""The identification methods [`identify()`][tl_multilingual.neurons.identification.identify] dispatches to, by name: each
declares its parameters (defaults, meanings, valid values) and whether it has a lambda."""

Method = Literal[tuple(METHODS)]  # type: ignore[valid-type]
"""The names of the identification methods, from [`METHODS`][tl_multilingual.neurons.identification.METHODS]."""


def identify(stats: ActivationStats, method: Method = "ternary", **params: Any) -> LanguageNeurons:
    """Identify language neurons from activation statistics.

    Args:
        stats: activation statistics of at least two languages.
        method: a name of [`METHODS`][tl_multilingual.neurons.identification.METHODS]: ``"ternary"`` (Zhang et al., AAAI-26)
            or ``"lape"`` (Tang et al., 2024).
        **params: the method's parameters, as its entry of ``METHODS`` declares them
            (defaults in brackets):

            - both methods: ``top_rate`` [0.01], the fraction of all neurons selected
              (``round(top_rate * n_layers * d_mlp)``); ``bar_ratio`` [0.95], the
              activation bar is that quantile of all probabilities and a neuron
              belongs to the languages whose probability exceeds it; ``prefilter``
              (LAPE's pre-filter: neurons with no probability above the
              ``filter_rate`` [0.95] quantile are never selected; on for LAPE [True],
              off for ternary [False], as in the reference implementations).
            - ternary only: ``lam`` ["auto"], Zhang et al.'s lambda, or ``"auto"`` for
              its binary search on ``lam_range`` [(0.0, 0.2)] with tolerance ``tol``
              [0.001]. Lambda weighs the largest language probability against the
              entropy in the ternary score (0: entropy alone); the search returns the
              largest lambda in the range at which no selected neuron is above the
              bar in every language. When it ends at the upper bound, two cases are
              told apart: the criterion binds at a larger lambda (a warning names a
              range that contains it), or it binds at no lambda at all (the data do
              not identify lambda: one warning, lambda is the upper bound of the
              range, and the class counts over [`LAMBDA_GRID`][tl_multilingual.neurons.identification.LAMBDA_GRID] are
              kept: `LanguageNeurons.lambda_sensitivity()`).

    Returns:
        [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons] with the masks, the lambda, the diagnostics and the
        resolved [`recipe`][tl_multilingual.neurons.classes.LanguageNeurons.recipe] (``identify(other_stats,
        **neurons.recipe)`` repeats the identification with the same lambda).

    Raises:
        IdentificationError: for an unknown method, a parameter the method does not
            take (the message names the method that does), a value out of range,
            statistics of fewer than two languages or a language without tokens, or a
            lambda search that finds no admissible lambda.

    Warns:
        TLMultilingualWarning: when the lambda search ends at a bound of ``lam_range`` (or
            the data do not identify lambda); when LAPE
            selects neurons that are above the bar in no language (they are dropped:
            ``LanguageNeurons.dropped``).
    """
    if not isinstance(stats, ActivationStats):
        raise IdentificationError(f"identify needs ActivationStats, got {type(stats).__name__}")
    if method not in METHODS:
        raise IdentificationError(f"unknown method {method!r}: use one of {tuple(METHODS)}")
    spec = METHODS[method]
    values = spec.resolve(params)
    if len(stats.languages) < 2:
        raise IdentificationError("identification compares languages: give statistics of at least two")
    try:
        probs = stats.probabilities()
    except Exception as err:  # StatsError: a language without tokens
        raise IdentificationError(str(err)) from err
    found = spec.run(probs, **values)
    recipe = {"method": method, **values}
    if spec.has_lambda:
        recipe["lam"] = found.lam  # the lambda found: repeating the recipe does not search again
    if "lam_range" in recipe:
        recipe["lam_range"] = tuple(recipe["lam_range"])
    return LanguageNeurons.from_selection(
        stats.languages,
        found.selection.selected,
        found.selection.above,
        method=method,
        lam=found.lam,
        bar=found.selection.bar,
        params=found.params,
        source={"model": stats.model, "corpus": stats.corpus, "token_policy": stats.token_policy},
        recipe=recipe,
    )


def identify_replicate(
    stats: ActivationStats, neurons: LanguageNeurons, generator: torch.Generator | None = None
) -> LanguageNeurons:
    """One parametric bootstrap replicate of an identification: every activation count
    of ``stats`` redrawn as ``Binomial(tokens, p)`` ([`ActivationStats.redraw()`][tl_multilingual.neurons.stats.ActivationStats.redraw],
    tokens treated as independent) and the neurons identified again with
    ``neurons.recipe`` (same method, parameters and lambda).

    The one refit behind every interval on identified neurons: the stability of a stage
    map ([`map_stages()`][tl_multilingual.stages.mapping.map_stages]) and the headline intervals of a comparison
    ([`Comparison.headlines()`][tl_multilingual.experiments.comparison.Comparison.headlines]).

    Args:
        stats: the statistics ``neurons`` were identified from.
        neurons: identified neurons with a [`recipe`][tl_multilingual.neurons.classes.LanguageNeurons.recipe].
        generator: the random generator of the redraw; consecutive calls with one
            generator give independent replicates, reproducibly.

    Returns:
        The replicate's [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons].

    Raises:
        IdentificationError: neurons without a recipe (imported from the reference
            format).
    """
    return identify(stats.redraw(generator), **neurons.recipe)
