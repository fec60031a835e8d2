"""Zhang et al.'s (AAAI-26) stage signatures, checked on every map, and the cautions a
stage map carries.

The signatures ([`SIGNATURES`][tl_multilingual.stages.signatures.SIGNATURES]) are what the paper says each stage looks
like, as rules on the stage means of one feature: shared reasoning has the fewest
language neurons of the first three stages, and vocabulary output the most general
neurons (neuron signal); the target answer is most probable in vocabulary output
(lens signal). They are *checks*: each is tested on the best unconstrained fit (does
it hold in the data?) and on the map's boundaries (does the map meet it?), and a
signature the data break is named with where it breaks
([`SignatureCheck`][tl_multilingual.stages.stage_map.SignatureCheck]). With ``signatures="auto"`` (the default of
[`map_stages()`][tl_multilingual.stages.mapping.map_stages]) the map is the best fit that meets them unless the
evidence rejects it (the rule is stated in [`tl_multilingual.stages.mapping`][tl_multilingual.stages.mapping]).

Every caution about a map is a plain sentence in `StageMap.warnings`, also raised
as a [`StageWarning`][tl_multilingual.stages.signatures.StageWarning]: a signature the data break, the fit the
signatures impose when the data reject it (and the map used instead), signatures not
imposed at the caller's request, no segmentation meeting them, a stage that is a
single layer only because a signature forces it, a fit no better than chance, four
stages no better than three or two, and neuron and lens maps that disagree. Each
sentence is said only when it is true of the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TLMultilingualWarning
from .stage_map import (
    _BOUNDARIES,
    STAGES,
    SignalMap,
    SignatureCheck,
    _layers_text,
    _rejections,
    _span_text,
    _spans,
)

__all__ = ["SIGNATURES", "StageWarning"]

_LABELS = {"neurons": "Neuron-class map", "lens": "Logit-lens map", "similarity": "Similarity map"}
_NAMES = {"neurons": "neuron-class", "lens": "logit-lens", "similarity": "similarity"}
_BY = {"neurons": "the neurons", "lens": "the lens", "similarity": "the similarity"}


class StageWarning(TLMultilingualWarning):
    """A caution about a stage map: a failed signature, a fit no better than chance,
    signals that disagree (also kept in `StageMap.warnings`)."""


@dataclass(frozen=True)
class _Signature:
    name: str
    signal: str
    column: str  # feature column
    rule: str  # "min_second", "max_last" or "max_second"
    text: str


SIGNATURES = (
    _Signature("fewest_language_neurons_in_shared_reasoning", "neurons", "f_language", "min_second",
               "shared reasoning has the fewest language neurons of the first three stages"),
    _Signature("most_general_neurons_in_vocabulary_output", "neurons", "f_general", "max_last",
               "vocabulary output has the most general neurons"),
    _Signature("target_most_probable_in_vocabulary_output", "lens", "f_target", "max_last",
               "the target answer is most probable in vocabulary output"),
    _Signature("highest_similarity_in_shared_reasoning", "similarity", "f_similarity", "max_second",
               "shared reasoning holds the highest cross-lingual similarity"),
)
"""Zhang et al.'s (AAAI-26) stage signatures, checked on every map (and imposed with ``signatures=True``)."""


def _signatures_for(signals: Sequence[str], names: Sequence[str]) -> list[tuple[_Signature, int]]:
    return [(s, names.index(s.column)) for s in SIGNATURES if s.signal in signals and s.column in names]


def _check(sig: _Signature, evidence: pd.DataFrame, free: tuple[int, int, int], chosen: tuple[int, int, int],
           n: int) -> SignatureCheck:
    values = evidence[sig.column].to_numpy(float)
    scale = float(np.nanstd(values)) or 1.0
    spans = _spans(free, n)

    def stage_means(bounds: Sequence[int]) -> list[float]:
        return [float(np.nanmean(values[span.start : span.stop])) for span in _spans(bounds, n).values()]

    def holds(bounds: Sequence[int]) -> bool:
        m = stage_means(bounds)
        if sig.rule == "min_second":
            return m[1] <= m[0] + 1e-9 * scale and m[1] <= m[2] + 1e-9 * scale
        if sig.rule == "max_second":
            return m[1] + 1e-9 * scale >= max(m)
        return m[3] + 1e-9 * scale >= max(m)

    def where(stage: str) -> str:
        return f"{stage.replace('_', ' ')} ({_layers_text(spans[stage])})"

    free_holds = holds(free)
    detail = ""
    if not free_holds:
        m = stage_means(free)
        if sig.rule == "min_second":
            low = STAGES[int(np.argmin(m[:3]))]
            detail = (f"in the best unconstrained fit, language neurons are fewest in {where(low)}, "
                      f"not in {where('shared_reasoning')}")
        elif sig.rule == "max_second":
            high = STAGES[int(np.argmax(m))]
            peak = int(np.nanargmax(values))
            detail = (f"translations are most alike at layer {peak} (excess over the shuffled "
                      f"pairs {values[peak]:.2g}); in the best unconstrained fit the similarity "
                      f"is highest in {where(high)}, not in {where('shared_reasoning')}")
        else:
            high = STAGES[int(np.argmax(m))]
            peak = int(np.nanargmax(values))
            if sig.column == "f_general":
                count = evidence["general_neurons"].iloc[peak] if "general_neurons" in evidence else values[peak]
                what = f"general neurons peak at layer {peak} ({count:.0f})"
                most = "the most general neurons are"
            else:
                what = f"the target answer's lens probability peaks at layer {peak} ({values[peak]:.2g})"
                most = "it is highest"
            detail = (f"{what}; in the best unconstrained fit {most} in {where(high)}, "
                      f"not in {where('vocabulary_output')}")
    return SignatureCheck(sig.name, sig.text, free_holds, holds(chosen), detail)


def _warnings(maps: dict[str, SignalMap], agreement: pd.DataFrame | None, alpha: float, tolerance: int) -> list[str]:
    out = []
    for name, fit in maps.items():
        label = _LABELS.get(name, "Combined map")
        n = fit.n_layers
        failed = [c for c in fit.checks if not c.holds]
        if "+" in name and failed:  # each signal's own map has already said where
            out.append(f"{label}: Zhang et al.'s (AAAI-26) signatures that do not hold in the data: "
                       + "; ".join(f'"{c.text}"' for c in failed) + ".")
        for check in failed if "+" not in name else ():
            out.append(f"{label}: Zhang et al.'s (AAAI-26) signature \"{check.text}\" does not hold in the data: {check.detail}.")
        if failed:
            free = _span_text(fit.unconstrained, n)
            if fit.choice == "constrained" and fit.boundaries != fit.unconstrained:
                out.append(f"{label}: imposing Zhang et al.'s (AAAI-26) signatures gives "
                           f"{_span_text(fit.boundaries, n)}; the best fit without them is {free} "
                           "(StageMap.unconstrained()).")
            elif fit.imposed is None:
                out.append(f"{label}: no four-stage segmentation meets Zhang et al.'s (AAAI-26) "
                           "signatures; the map is the best fit without them.")
            elif fit.choice_reason.startswith("the signatures were not imposed"):
                out.append(f"{label}: the signatures were not imposed (signatures=False); the map "
                           f"is the best fit without them, and imposing them would give "
                           f"{_span_text(fit.imposed, n)}.")
            else:
                why = fit.choice_reason.split(": ", 1)[-1]
                out.append(f"{label}: imposing Zhang et al.'s (AAAI-26) signatures gives "
                           f"{_span_text(fit.imposed, n)}, which the data reject ({why}); the map "
                           f"is the best fit without them, {free} (the constrained map: "
                           "StageMap.constrained_map() or signatures=True).")
        if fit.boundaries != fit.unconstrained:
            for stage in STAGES:
                span, free = fit.layers(stage), fit.layers(stage, unconstrained=True)
                if len(span) == 1 and span != free:
                    note = ""
                    key = next((b for b in _BOUNDARIES if b.startswith(stage + "|") or b.endswith("|" + stage)), None)
                    if key in fit.stability:
                        note = (f" Its stability under resampling ({fit.stability[key]:.2f}) says how reliably the "
                                "constraint forces it, not that the data support it.")
                    out.append(f"{label}: {stage.replace('_', ' ')} is a single layer ({span.start}) only because the "
                               f"signatures force it; the best unconstrained fit gives it {_layers_text(free)}.{note}")
        q = fit.quality
        if n == 4:
            out.append(f"{label}: with four layers every stage is one layer; it is the only segmentation there is, "
                       "so the data can neither support nor reject it.")
        elif q is not None and np.isfinite(q.p_value) and q.p_value >= alpha:
            out.append(f"{label}: the four stages explain {q.explained:.0%} of the features' variation across "
                       f"layers, no more than the best four-stage fit to layer-shuffled features (p = "
                       f"{q.p_value:.2g}): the data do not show four stages, however stable the boundaries.")
        elif q is not None and np.isfinite(q.p_value):
            weak = [k for k in (3, 2) if np.isfinite(q.beats.get(k, np.nan)) and q.beats[k] >= alpha]
            if weak:
                which = " or ".join(f"{k} stages (p = {q.beats[k]:.2g})" for k in weak)
                three = "; three are Wendler et al.'s three phases" if 3 in weak else ""
                out.append(f"{label}: four stages fit the layers no better than {which} beyond chance{three}.")
    if agreement is not None:
        signals = [c for c in agreement.columns if c in _NAMES]
        names = " and ".join(_NAMES[s] for s in signals) if len(signals) == 2 else \
            ", ".join(_NAMES[s] for s in signals[:-1]) + f" and {_NAMES[signals[-1]]}"
        for _, row in agreement.iterrows():
            if abs(row["difference"]) > tolerance:
                stage = row["boundary"].split("|")[1].replace("_", " ")
                where = ", ".join(f"layer {row[s]} by {_BY[s]}" for s in signals)
                out.append(f"The {names} maps disagree on where {stage} begins: {where} "
                           f"({abs(row['difference'])} layers apart).")
    return out


def _choose(mode: Any, fit: SignalMap, alpha: float) -> tuple[str, str]:
    """Which of ``fit``'s maps is the default (``"constrained"`` or ``"unconstrained"``)
    and why, by ``map_stages``'s ``signatures`` argument ``mode``."""
    if mode is False:
        return "unconstrained", "the signatures were not imposed (signatures=False)"
    if fit.imposed is None:
        return "unconstrained", "no four-stage segmentation meets the signatures"
    if fit.imposed == fit.unconstrained:
        return "constrained", "the best fit meets the signatures"
    if mode is True:
        return "constrained", "the signatures were imposed (signatures=True)"
    rejected = _rejections(fit, fit.imposed, alpha)
    if rejected:
        return ("unconstrained",
                "the data reject the signature-constrained fit: " + "; ".join(rejected))
    return ("constrained",
            "the signature-constrained fit beats chance, beats three stages and forces no stage")
