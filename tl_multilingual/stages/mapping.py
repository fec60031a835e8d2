"""[`map_stages()`][tl_multilingual.stages.mapping.map_stages]: map a model's layers onto the four stages.

The layers are segmented into four contiguous stages from either or both of two
signals ([`tl_multilingual.stages.features`][tl_multilingual.stages.features]): the neuron classes and the logit
lens. Each signal is fitted alone and, when both are given, together; the combined
fit gives the map's boundaries. The fit is exact
([`tl_multilingual.stages.segmentation`][tl_multilingual.stages.segmentation]); Zhang et al.'s (AAAI-26) signatures
are checked on every fit ([`tl_multilingual.stages.signatures`][tl_multilingual.stages.signatures]); each fit's
quality is tested against layer-shuffled features.

The default map is the one the evidence supports. Each fit has two candidates: ``C``,
the best segmentation meeting the signatures, and ``U``, the best without them. With
``signatures="auto"`` the map is ``C`` unless the evidence rejects it, which it does
when

1. ``C`` is no better than the best four-stage fit to layer-shuffled features
   (``p >= alpha``), or
2. a stage of ``C`` is a single layer only because the signatures force it (it is not
   one in ``U``), or
3. ``C`` differs from ``U`` and explains less of the features' variation than the
   best three-stage fit (imposing the signatures costs more than losing a stage).

A rejected ``C`` gives way to ``U``, as does a ``C`` that does not exist. Where the
signatures hold in the data's own fit, ``C = U``: Zhang et al.'s map of their released
Mistral-7B statistics (0-4 | 5-17 | 18-30 | 31) stays the default, supported and
without a warning. ``signatures=True`` imposes ``C`` whatever the evidence (the
constrained map by name; also ``StageMap.constrained_map()``), ``signatures=False``
never imposes it.

The verdict ([`Verdict`][tl_multilingual.stages.stage_map.Verdict]) on the map: *not supported* for any
reason of the rule above, or with four layers; *weak* when it beats chance but four
stages are no better than three or two, a signature does not hold in the data (or
only when imposed), the neuron and lens maps disagree beyond ``tolerance``, or no null
was drawn; *supported* otherwise. The rule and the verdict use only what the fit
already computes: the null, the comparison of the two candidates and the forced
stages.

Stability: refits on bootstrap replicates, the lens prompts resampled and the
activation counts redrawn with the neurons re-identified by their recipe
([`identify_replicate()`][tl_multilingual.neurons.identification.identify_replicate]); ``stability[b]`` is the share of refits
putting boundary ``b`` at the same layer. Stability says how reproducible a
boundary is, not whether the data support it: a boundary a constraint forces is
perfectly stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from .. import resample
from ..errors import TLMultilingualError, warn
from ..neurons.classes import LanguageNeurons
from ..neurons.identification import identify_replicate
from ..neurons.stats import ActivationStats
from ..provenance import check_compatible
from .features import _standardise, lens_features, neuron_features, similarity_features
from .segmentation import _constrained, _costs, _dp, _quality, check_layer_count
from .signatures import StageWarning, _check, _choose, _signatures_for, _warnings
from .stage_map import _BOUNDARIES, STAGES, SignalMap, StageMap, _spans, _verdict

if TYPE_CHECKING:
    from .lens import LensResult
    from .similarity import SimilarityResult

__all__ = ["map_stages"]


def _columns(frames: dict[str, pd.DataFrame]) -> tuple[np.ndarray, list[str]]:
    names: list[str] = []
    parts = []
    for frame in frames.values():
        cols = [c for c in frame.columns if c.startswith("f_")]
        names += cols
        parts.append(frame[cols].to_numpy(float))
    return _standardise(np.hstack(parts)), names


def _fit(
    frames: dict[str, pd.DataFrame],
) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """(the best unconstrained boundaries, the best boundaries meeting the signatures or
    None when none do)."""
    x, names = _columns(frames)
    cost, sums = _costs(x[None])
    free = tuple(int(b) for b in _dp(cost, 4)[1][0])
    constraints = [(col, s.rule) for s, col in _signatures_for(list(frames), names)]
    if not constraints:
        return free, free  # type: ignore[return-value]
    found, _ = _constrained(cost[0], sums[0], constraints, free)  # type: ignore[arg-type]
    return free, found  # type: ignore[return-value]


def _refit(frames: dict[str, pd.DataFrame], choice: str) -> tuple[int, int, int]:
    """A refit's boundaries, by the same choice as the map's (the constrained fit, or the
    unconstrained one where none meets the signatures)."""
    free, imposed = _fit(frames)
    return imposed if choice == "constrained" and imposed is not None else free


def _signal_map(
    signal: str, frames: dict[str, pd.DataFrame], evidence: pd.DataFrame, n: int, signatures: Any,
    n_null: int, seed: int, alpha: float,
) -> SignalMap:
    free, imposed = _fit(frames)
    x, names = _columns(frames)
    free_quality = _quality(x, free, n_null, seed)
    imposed_quality = (None if imposed is None else free_quality if imposed == free
                       else _quality(x, imposed, n_null, seed))
    fit = SignalMap(signal, n, free, free, imposed == free, (), free_quality, imposed=imposed,
                    imposed_quality=imposed_quality, unconstrained_quality=free_quality)
    choice, reason = _choose(signatures, fit, alpha)
    chosen = imposed if choice == "constrained" else free
    checks = tuple(_check(s, evidence, free, chosen, n)  # type: ignore[arg-type]
                   for s, _ in _signatures_for(list(frames), names))
    fit.boundaries, fit.checks = chosen, checks  # type: ignore[assignment]
    fit.constrained = all(c.met for c in checks)
    fit.quality = fit.quality_of(chosen)
    fit.choice, fit.choice_reason = choice, reason
    return fit


def _stability(fit: SignalMap, replicates: np.ndarray) -> None:
    for k, name in enumerate(_BOUNDARIES):
        fit.stability[name] = float((replicates[:, k] == fit.boundaries[k]).mean())
        low, high = resample.percentile_interval(replicates[:, k].astype(float), ci=0.90)
        fit.intervals[name] = (int(np.floor(low)), int(np.ceil(high)))


def _legacy_arguments(neurons: Any, lens: Any) -> tuple[Any, Any]:
    """``map_stages(model, neurons, ...)``, the old form with a model first."""
    from .lens import LensResult

    if neurons is None and isinstance(lens, LanguageNeurons):
        neurons, lens = lens, None
    elif neurons is not None and not isinstance(neurons, (LanguageNeurons, LensResult)):
        neurons, lens = (lens, None) if isinstance(lens, LanguageNeurons) else (None, lens)
    else:
        return neurons, lens
    warn("map_stages no longer takes a model first and no longer attaches the map to it: call "
         "map_stages(neurons, lens=..., stats=...) and pass layers=stage_map.layers(stage) to experiments",
         DeprecationWarning)
    return neurons, lens


def map_stages(
    neurons: LanguageNeurons | None = None,
    lens: LensResult | None = None,
    *,
    similarity: SimilarityResult | None = None,
    stats: ActivationStats | None = None,
    target: str | None = None,
    signatures: bool | Literal["auto"] = "auto",
    n_boot: int = 100,
    n_null: int = 1000,
    alpha: float = 0.05,
    tolerance: int = 2,
    seed: int = 0,
) -> StageMap:
    """Map the layers onto the four stages (see the module docstring).

    Each signal given is fitted alone and, when both are given, together; the
    combined fit gives `StageMap.boundaries`. Every caution (a signature the
    data break, a fit no better than chance, four stages no better than three, maps
    that disagree by more than ``tolerance`` layers) is a sentence in
    `StageMap.warnings` and is raised as a [`StageWarning`][tl_multilingual.stages.signatures.StageWarning].

    Args:
        neurons: identified neurons (the class-profile signal).
        lens: a `LensResult` (the logit-lens signal).
        similarity: a [`SimilarityResult`][tl_multilingual.stages.similarity.SimilarityResult] (the
            cross-lingual representation-similarity signal; its refits resample the
            items).
        stats: the statistics ``neurons`` came from, for the stability refits of the
            neuron signal (redrawn counts, neurons re-identified with the same recipe).
        target: the lens language to follow (default: each prompt's target).
        signatures: ``"auto"``: impose Zhang et al.'s (AAAI-26) signatures unless the
            evidence rejects the constrained fit (the rule of the module docstring);
            True: impose them whatever the evidence (the constrained map by name, also
            ``StageMap.constrained_map()``); False: never impose them. They are checked
            and reported either way.
        n_boot: bootstrap refits for stability (0: none).
        n_null: null draws for each p-value of the fit quality (0: none).
        alpha: level below which a p-value counts as significant in the default rule,
            the verdict and the warnings.
        tolerance: layers by which the signals' maps may disagree on a boundary before
            a warning.
        seed: seed of the refits and null draws.

    Returns:
        [`StageMap`][tl_multilingual.stages.stage_map.StageMap].

    Raises:
        TLMultilingualError: without any signal, with fewer than four layers, with
            a lens and neurons of different layer counts, or an unknown ``signatures``.
    """
    if signatures not in (True, False, "auto"):
        raise TLMultilingualError(f"signatures must be 'auto', True or False, got {signatures!r}")
    neurons, lens = _legacy_arguments(neurons, lens)
    if neurons is None and lens is None and similarity is None:
        raise TLMultilingualError(
            "map_stages needs neurons, a lens result, a similarity result, or several")
    if neurons is not None and stats is not None:
        check_compatible(stats.provenance, neurons.provenance, labels=("the statistics", "the neurons"))
        if tuple(stats.languages) != tuple(neurons.languages):
            raise TLMultilingualError(f"the statistics cover {stats.languages} but the neurons {neurons.languages}")
    frames: dict[str, pd.DataFrame] = {}
    if neurons is not None:
        frames["neurons"] = neuron_features(neurons)
    if lens is not None:
        frames["lens"] = lens_features(lens, target)
    if similarity is not None:
        frames["similarity"] = similarity_features(similarity)
    n_layers = len(next(iter(frames.values())))
    if any(len(f) != n_layers for f in frames.values()):
        counts = ", ".join(f"{name} {len(f)}" for name, f in frames.items())
        raise TLMultilingualError(
            f"the signals come from models with different layer counts ({counts})")
    check_layer_count(n_layers)
    evidence = pd.concat(list(frames.values()), axis=1)
    evidence.insert(0, "layer", range(n_layers))
    signals = tuple(frames)
    groups = {s: {s: frames[s]} for s in signals}
    if len(signals) > 1:
        groups["+".join(signals)] = frames
    maps = {name: _signal_map(name, group, evidence, n_layers, signatures, n_null, seed, alpha)
            for name, group in groups.items()}
    combined = maps["+".join(signals)]

    can_redraw = neurons is not None and stats is not None
    if n_boot > 0 and (can_redraw or lens is not None or similarity is not None):
        generator = torch.Generator().manual_seed(seed)
        prompt_draws = resample.draws(lens.probability.shape[0], n_boot, seed) if lens is not None else None
        item_draws = (resample.draws(similarity.n_items, n_boot, seed + 1)
                      if similarity is not None else None)
        replicates: dict[str, list[tuple[int, int, int]]] = {name: [] for name in maps}
        for r in range(n_boot):
            boot = dict(frames)
            if can_redraw:
                boot["neurons"] = neuron_features(identify_replicate(stats, neurons, generator))  # type: ignore[arg-type]
            if prompt_draws is not None:
                boot["lens"] = lens_features(lens.select(prompt_draws[r]), target)  # type: ignore[union-attr]
            if item_draws is not None:
                boot["similarity"] = similarity_features(similarity,  # type: ignore[arg-type]
                                                         torch.as_tensor(item_draws[r]))
            for name in maps:
                group = {s: boot[s] for s in groups[name]}
                replicates[name].append(_refit(group, maps[name].choice))
        for name, fit in maps.items():
            _stability(fit, np.array(replicates[name]))
        reps = np.array(replicates["+".join(signals)])
        shares = {s: np.zeros(n_layers) for s in STAGES}
        for b in reps:
            for s, span in _spans(b, n_layers).items():
                shares[s][span.start : span.stop] += 1 / len(reps)
        evidence["stage_agreement"] = [shares[_stage_at(combined.boundaries, n_layers, layer)][layer]
                                       for layer in range(n_layers)]
        evidence["boundary_share"] = np.bincount(reps.reshape(-1), minlength=n_layers)[:n_layers] / len(reps)

    evidence.insert(1, "stage", [_stage_at(combined.boundaries, n_layers, layer) for layer in range(n_layers)])
    if len(signals) > 1:
        for s in signals:
            evidence[f"stage_{s}"] = [_stage_at(maps[s].boundaries, n_layers, layer) for layer in range(n_layers)]
    agreement = None
    if len(signals) > 1:
        agreement = pd.DataFrame({"boundary": list(_BOUNDARIES),
                                  **{s: list(maps[s].boundaries) for s in signals}})
        if signals == ("neurons", "lens"):
            agreement["difference"] = agreement["lens"] - agreement["neurons"]
        else:  # the spread: the largest distance between two signals
            spread = agreement[list(signals)]
            agreement["difference"] = spread.max(axis=1) - spread.min(axis=1)
        agreement["agree"] = agreement["difference"].abs() <= tolerance
    cautions = tuple(_warnings(maps, agreement, alpha, tolerance))
    for sentence in cautions:
        warn(sentence, StageWarning)
    return StageMap(
        n_layers, combined.boundaries, evidence, dict(combined.stability), dict(combined.intervals),
        combined.constrained, signals, neurons.d_mlp if neurons is not None else None, maps, agreement, cautions,
        _verdict(combined, combined.boundaries, agreement, alpha), combined.choice, alpha,
        tolerance,
    )


def _stage_at(boundaries: Sequence[int], n_layers: int, layer: int) -> str:
    for stage, span in _spans(boundaries, n_layers).items():
        if layer in span:
            return stage
    raise TLMultilingualError(f"layer {layer} is outside [0, {n_layers})")
