"""The four stages of multilingual inference (Zhang et al., AAAI-26), mapped onto layers.

Stages, in order: ``understanding`` (language-specific and -related neurons peak in
the first layers), ``shared_reasoning`` (general neurons dominate, language neurons
nearly absent), ``output_transformation`` (language neurons peak again) and
``vocabulary_output`` (the last layer(s), general neurons at their maximum).

[`map_stages()`][tl_multilingual.stages.segmentation.map_stages] segments the layers into four contiguous stages from either or
both of two signals, each feature standardised across layers:

- neuron classes ([`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons]): per layer ``log(1 + language neurons)``
  (specific or related) and the fraction of general neurons;
- the logit lens (`LensResult`, Wendler et al., 2024): per layer the mean
  probability of the target-language answer, of the English answer, and the entropy.

Each signal is fitted alone and both together. The fit: the boundaries
``0 < b1 < b2 < b3 < n_layers`` minimise the squared error of a piecewise-constant
fit of the feature vectors, exactly, by dynamic programming. Zhang et al.'s (AAAI-26) stage
signatures are *checks*: shared reasoning has the fewest language neurons of the
first three stages and vocabulary output the most general neurons (neuron signal);
vocabulary output has the most probable target answer (lens signal). With
``signatures=True`` (the default) the map is the best fit that meets them, found
exactly; either way, every signature is checked on the best unconstrained fit, and
a signature the data break is named, with where it breaks, in
`StageMap.warnings`.

Fit quality, per map ([`FitQuality`][tl_multilingual.stages.segmentation.FitQuality]): the share of the features' variation
across layers the four stages explain, a p-value against the best four-stage fit
to layer-shuffled features, and whether four stages beat three (Wendler et al.'s
three phases) and two. Stability: refits on bootstrap replicates (lens prompts
resampled, activation counts redrawn with [`ActivationStats.redraw()`][tl_multilingual.neurons.stats.ActivationStats.redraw] and the
neurons re-identified with the same recipe); ``stability[b]`` is the share of refits
putting boundary ``b`` at the same layer. Stability says how reproducible a boundary
is, not whether the data support it: a boundary a constraint forces is perfectly
stable.

Experiments take a stage map explicitly: restrict them with
``layers=stage_map.layers("shared_reasoning")`` (or a mask with
``stage_map.mask("shared_reasoning")``). `stage_effects()` (module
[`tl_multilingual.experiments.stage_deactivation`][tl_multilingual.experiments.stage_deactivation]) gives the causal evidence per stage.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .. import resample
from ..errors import TLMultilingualError, TLMultilingualWarning, warn
from ..neurons.classes import LanguageNeurons
from ..neurons.masks import NeuronMask
from ..neurons.stats import ActivationStats
from ..persist import write_text
from ..provenance import check_compatible

if TYPE_CHECKING:
    from .lens import LensResult

__all__ = [
    "STAGES",
    "SIGNATURES",
    "StageMap",
    "SignalMap",
    "FitQuality",
    "SignatureCheck",
    "StageWarning",
    "map_stages",
    "segment",
    "neuron_features",
    "lens_features",
]

STAGES = ("understanding", "shared_reasoning", "output_transformation", "vocabulary_output")
_BOUNDARIES = ("understanding|shared_reasoning", "shared_reasoning|output_transformation",
               "output_transformation|vocabulary_output")
_LABELS = {"neurons": "Neuron-class map", "lens": "Logit-lens map", "neurons+lens": "Combined map"}


class StageWarning(TLMultilingualWarning):
    """A caution about a stage map: a failed signature, a fit no better than chance,
    signals that disagree (also kept in `StageMap.warnings`)."""


@dataclass(frozen=True)
class _Signature:
    name: str
    signal: str
    column: str  # feature column
    rule: str  # "min_second" or "max_last"
    text: str


SIGNATURES = (
    _Signature("fewest_language_neurons_in_shared_reasoning", "neurons", "f_language", "min_second",
               "shared reasoning has the fewest language neurons of the first three stages"),
    _Signature("most_general_neurons_in_vocabulary_output", "neurons", "f_general", "max_last",
               "vocabulary output has the most general neurons"),
    _Signature("target_most_probable_in_vocabulary_output", "lens", "f_target", "max_last",
               "the target answer is most probable in vocabulary output"),
)
"""Zhang et al.'s (AAAI-26) stage signatures, checked on every map (and imposed with ``signatures=True``)."""


# -- results ------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    """One of Zhang et al.'s (AAAI-26) signatures, checked on a map.

    Attributes:
        name: the signature's key (see [`SIGNATURES`][tl_multilingual.stages.segmentation.SIGNATURES]).
        text: the signature in words.
        holds: whether it holds in the best unconstrained fit (the data's own).
        met: whether the map's boundaries meet it.
        detail: where it fails (empty when it holds).
    """

    name: str
    text: str
    holds: bool
    met: bool
    detail: str = ""


@dataclass(frozen=True)
class FitQuality:
    """How well four contiguous stages describe a signal's features.

    Attributes:
        explained: share of the features' variation across layers (sum of squares
            about their mean, standardised features) that the map's four stage means
            explain, in [0, 1].
        explained_unconstrained: the same for the best unconstrained four-stage fit.
        p_value: share of ``n_null`` layer-shuffles of the features whose *best*
            four-stage fit explains at least ``explained`` (with the +1 correction):
            small when the features change along the layers in a way four contiguous
            stages capture better than chance.
        explained_by_stages: best unconstrained fit explained with 2, 3 and 4 stages.
        beats: ``{3: p, 2: p}``: p-value that four stages explain more than three
            (Wendler et al.'s three phases) or two, against fits to data simulated
            from the smaller fit with its residuals shuffled across layers.
        n_null: null draws behind each p-value.
    """

    explained: float
    explained_unconstrained: float
    p_value: float
    explained_by_stages: dict[int, float]
    beats: dict[int, float]
    n_null: int

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the map explains more than chance at level ``alpha``."""
        return bool(self.p_value < alpha)

    def to_dict(self) -> dict[str, Any]:
        return {"explained": self.explained, "explained_unconstrained": self.explained_unconstrained,
                "p_value": self.p_value, "explained_by_stages": {str(k): v for k, v in self.explained_by_stages.items()},
                "beats": {str(k): v for k, v in self.beats.items()}, "n_null": self.n_null}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitQuality:
        return cls(float(data["explained"]), float(data["explained_unconstrained"]), float(data["p_value"]),
                   {int(k): float(v) for k, v in data["explained_by_stages"].items()},
                   {int(k): float(v) for k, v in data["beats"].items()}, int(data["n_null"]))


def _spans(boundaries: Sequence[int], n_layers: int) -> dict[str, range]:
    edges = (0, *boundaries, n_layers)
    return {s: range(edges[k], edges[k + 1]) for k, s in enumerate(STAGES)}


def _layers_text(span: range) -> str:
    return f"layer {span.start}" if len(span) == 1 else f"layers {span.start}-{span.stop - 1}"


def _span_text(boundaries: Sequence[int], n_layers: int) -> str:
    parts = []
    for stage, span in _spans(boundaries, n_layers).items():
        layers = f"{span.start}" if len(span) == 1 else f"{span.start}-{span.stop - 1}"
        parts.append(f"{stage.replace('_', ' ')} {layers}")
    return ", ".join(parts)


@dataclass
class SignalMap:
    """The four-stage fit of one signal (``"neurons"``, ``"lens"``) or of both
    (``"neurons+lens"``).

    Attributes:
        signal: which features were fitted.
        n_layers: number of layers.
        boundaries: first layer of the 2nd, 3rd and 4th stage of this map.
        unconstrained: the same for the best fit without Zhang et al.'s (AAAI-26) signatures.
        constrained: whether ``boundaries`` meet every signature of the signal.
        checks: every signature of the signal, checked.
        quality: fit quality against a null (None when not computed).
        stability: per boundary, the share of bootstrap refits that put it at exactly
            the same layer (empty without refits). Reproducibility, not support.
        intervals: per boundary, the 5th-95th percentile of its layer over refits.
    """

    signal: str
    n_layers: int
    boundaries: tuple[int, int, int]
    unconstrained: tuple[int, int, int]
    constrained: bool = True
    checks: tuple[SignatureCheck, ...] = ()
    quality: FitQuality | None = None
    stability: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)

    def layers(self, stage: str, *, unconstrained: bool = False) -> range:
        """The layers of a stage in this map (or in its unconstrained fit)."""
        if stage not in STAGES:
            raise TLMultilingualError(f"unknown stage {stage!r}; stages are {STAGES}")
        return _spans(self.unconstrained if unconstrained else self.boundaries, self.n_layers)[stage]

    def describe(self) -> str:
        """The stages in words: ``understanding 0-4, shared reasoning 5-17, ...``."""
        return _span_text(self.boundaries, self.n_layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal, "n_layers": self.n_layers, "boundaries": list(self.boundaries),
            "unconstrained": list(self.unconstrained), "constrained": self.constrained,
            "checks": [asdict(c) for c in self.checks],
            "quality": self.quality.to_dict() if self.quality is not None else None,
            "stability": self.stability, "intervals": {k: list(v) for k, v in self.intervals.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignalMap:
        return cls(
            data["signal"], int(data["n_layers"]), tuple(data["boundaries"]), tuple(data["unconstrained"]),
            bool(data["constrained"]), tuple(SignatureCheck(**c) for c in data.get("checks", [])),
            FitQuality.from_dict(data["quality"]) if data.get("quality") else None,
            {k: float(v) for k, v in data.get("stability", {}).items()},
            {k: tuple(v) for k, v in data.get("intervals", {}).items()},
        )


@dataclass
class StageMap:
    """Layers of each stage, each signal's own map, how well they fit, and cautions.

    Attributes:
        n_layers: number of layers.
        boundaries: first layer of the 2nd, 3rd and 4th stage (of the map fitted on
            every signal given).
        evidence: one row per layer: the raw features, the ``stage``, each signal's
            stage (``stage_neurons``, ``stage_lens``) and, with refits,
            ``stage_agreement`` (share of refits giving the layer the same stage) and
            ``boundary_share`` (share of refits in which some stage starts there).
        stability: per boundary, the share of bootstrap refits that put it at exactly
            the same layer (empty without refits): how reproducible the boundary is,
            not whether the data support it (see [`quality`][tl_multilingual.stages.segmentation.StageMap.quality]).
        intervals: per boundary, the 5th-95th percentile of its layer over refits.
        constrained: whether the boundaries meet Zhang et al.'s (AAAI-26) signatures.
        signals: which signals were used (``"neurons"``, ``"lens"``).
        d_mlp: neurons per layer (for [`mask()`][tl_multilingual.stages.segmentation.StageMap.mask]).
        by_signal: each signal's own map ([`SignalMap`][tl_multilingual.stages.segmentation.SignalMap]), and ``"neurons+lens"``
            for the combined one when both were given.
        agreement: per boundary, where the neuron and lens maps put it and how far
            apart (None unless both signals were given).
        warnings: every caution, as plain sentences (empty when all is well); each was
            also raised as a [`StageWarning`][tl_multilingual.stages.segmentation.StageWarning] when the map was made.
    """

    n_layers: int
    boundaries: tuple[int, int, int]
    evidence: pd.DataFrame
    stability: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)
    constrained: bool = True
    signals: tuple[str, ...] = ()
    d_mlp: int | None = None
    by_signal: dict[str, SignalMap] = field(default_factory=dict)
    agreement: pd.DataFrame | None = None
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_boundaries(cls, n_layers: int, boundaries: Sequence[int], *, d_mlp: int | None = None) -> StageMap:
        """A map given by hand (e.g. a paper's stages for a model): no evidence, no fit.

        Raises:
            TLMultilingualError: unless ``0 < b1 < b2 < b3 < n_layers``.
        """
        b = tuple(int(x) for x in boundaries)
        if len(b) != 3 or not 0 < b[0] < b[1] < b[2] < n_layers:
            raise TLMultilingualError(f"boundaries must be 0 < b1 < b2 < b3 < {n_layers}, got {tuple(boundaries)}")
        evidence = pd.DataFrame({"layer": range(n_layers)})
        stage_map = cls(n_layers, b, evidence, d_mlp=d_mlp)  # type: ignore[arg-type]
        evidence["stage"] = [stage_map.stage_of(layer) for layer in range(n_layers)]
        return stage_map

    @property
    def fit(self) -> SignalMap | None:
        """The map behind `boundaries` (the combined one when both signals were given)."""
        return self.by_signal.get("+".join(self.signals)) if self.signals else None

    @property
    def quality(self) -> FitQuality | None:
        """Fit quality of [`fit`][tl_multilingual.stages.segmentation.StageMap.fit] (None for a map given by hand)."""
        fit = self.fit
        return fit.quality if fit is not None else None

    @property
    def confidence(self) -> dict[str, float]:
        """Deprecated name of [`stability`][tl_multilingual.neurons.sharing_classes.Sharing.stability]."""
        warn("StageMap.confidence is now StageMap.stability (it measures stability under resampling, not "
             "support in the data)", DeprecationWarning)
        return self.stability

    def layers(self, stage: str) -> range:
        """The layers of a stage: pass them to experiments as ``layers=``.

        Raises:
            TLMultilingualError: for an unknown stage name.
        """
        if stage not in STAGES:
            raise TLMultilingualError(f"unknown stage {stage!r}; stages are {STAGES}")
        return _spans(self.boundaries, self.n_layers)[stage]

    def stage_of(self, layer: int) -> str:
        """The stage a layer belongs to."""
        for stage in STAGES:
            if layer in self.layers(stage):
                return stage
        raise TLMultilingualError(f"layer {layer} is outside [0, {self.n_layers})")

    def mask(self, stage: str, d_mlp: int | None = None) -> NeuronMask:
        """Every neuron of the stage's layers (combine with ``&`` to restrict a class)."""
        width = d_mlp or self.d_mlp
        if width is None:
            raise TLMultilingualError("this stage map does not know d_mlp: pass it")
        return NeuronMask.full(self.n_layers, width).restrict(self.layers(stage))

    def unconstrained(self) -> StageMap:
        """The best fit without Zhang et al.'s (AAAI-26) signatures, as a map of its own (same
        evidence and warnings)."""
        fit = self.fit
        if fit is None or fit.unconstrained == self.boundaries:
            return self
        out = replace(self, boundaries=fit.unconstrained, stability={}, intervals={},
                      constrained=all(c.holds for c in fit.checks), evidence=self.evidence.copy())
        out.evidence["stage"] = [out.stage_of(layer) for layer in range(self.n_layers)]
        return out

    def describe(self) -> str:
        """The stages in words: ``understanding 0-4, shared reasoning 5-17, ...``."""
        return _span_text(self.boundaries, self.n_layers)

    def summary(self) -> pd.DataFrame:
        """One row per map (each signal alone, then combined): its stages, the
        unconstrained fit, whether the signatures are met, fit quality and stability."""
        rows = []
        for name, fit in self.by_signal.items():
            q = fit.quality
            row: dict[str, Any] = {"map": name, "stages": fit.describe(),
                                   "unconstrained": _span_text(fit.unconstrained, fit.n_layers),
                                   "signatures_met": fit.constrained,
                                   "failed_signatures": ", ".join(c.name for c in fit.checks if not c.holds)}
            if q is not None:
                row.update({"explained": q.explained, "p_value": q.p_value,
                            "four_beat_three_p": q.beats.get(3), "four_beat_two_p": q.beats.get(2)})
            for k in _BOUNDARIES:
                row[f"stability {k}"] = fit.stability.get(k)
            rows.append(row)
        return pd.DataFrame(rows)

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer``, ``stage`` and the evidence."""
        return self.evidence.copy()

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data."""
        return {
            "n_layers": self.n_layers,
            "boundaries": list(self.boundaries),
            "stages": {s: [self.layers(s).start, self.layers(s).stop] for s in STAGES},
            "stability": self.stability,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "constrained": self.constrained,
            "signals": list(self.signals),
            "d_mlp": self.d_mlp,
            "by_signal": {k: v.to_dict() for k, v in self.by_signal.items()},
            "agreement": self.agreement.to_dict("records") if self.agreement is not None else None,
            "warnings": list(self.warnings),
            "evidence": self.evidence.to_dict("records"),
        }

    @property
    def provenance(self) -> dict[str, Any]:
        """The shape of the model the map was made for (``d_mlp`` None when unknown)."""
        return {"shape": (self.n_layers, self.d_mlp)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageMap:
        """From [`to_dict()`][tl_multilingual.stages.segmentation.StageMap.to_dict]'s plain data, checking every field.

        Raises:
            TLMultilingualError: a field is missing or invalid.
        """
        _check_fields(data)
        stability = data.get("stability", data.get("confidence", {}))  # "confidence": older files
        return cls(
            int(data["n_layers"]), tuple(data["boundaries"]), pd.DataFrame(data["evidence"]),
            dict(stability), {k: tuple(v) for k, v in data.get("intervals", {}).items()},
            bool(data.get("constrained", True)), tuple(data.get("signals", ())), data.get("d_mlp"),
            {k: SignalMap.from_dict(v) for k, v in data.get("by_signal", {}).items()},
            pd.DataFrame(data["agreement"]) if data.get("agreement") is not None else None,
            tuple(data.get("warnings", ())),
        )

    def save(self, path: str | Path) -> Path:
        """Save as JSON."""
        return write_text(path, json.dumps(self.to_dict(), indent=2, default=_json_default))

    @classmethod
    def load(cls, path: str | Path) -> StageMap:
        """Load a map saved with [`save()`][tl_multilingual.stages.segmentation.StageMap.save] (its warnings are kept, not raised again).

        Raises:
            TLMultilingualError: if ``path`` holds no saved stage map.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, TLMultilingualError) as err:
            raise TLMultilingualError(f"{path} is not a saved stage map: {err}") from err

    def __repr__(self) -> str:
        spans = ", ".join(f"{s}={self.layers(s).start}-{self.layers(s).stop - 1}" for s in STAGES)
        note = f", {len(self.warnings)} warnings" if self.warnings else ""
        return f"StageMap({spans}{note})"


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


# -- features -----------------------------------------------------------------------


def _check_fields(data: Any) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(data, dict):
        raise TLMultilingualError(f"a stage map is a JSON object, got {type(data).__name__}")
    for key in ("n_layers", "boundaries", "evidence"):
        if key not in data:
            raise TLMultilingualError(f"the field {key!r} is missing")
    n, bounds = data["n_layers"], data["boundaries"]
    if not is_int(n) or n < 4:
        raise TLMultilingualError(f"n_layers must be an integer of at least 4, got {n!r:.60}")
    if not (isinstance(bounds, list) and len(bounds) == 3 and all(is_int(b) for b in bounds)
            and 0 < bounds[0] < bounds[1] < bounds[2] < n):
        raise TLMultilingualError(f"boundaries must be 3 increasing layers inside (0, {n}), got {bounds!r:.60}")
    d_mlp = data.get("d_mlp")
    if d_mlp is not None and (not is_int(d_mlp) or d_mlp < 1):
        raise TLMultilingualError(f"d_mlp must be a positive integer or null, got {d_mlp!r:.60}")
    if not isinstance(data["evidence"], list) or len(data["evidence"]) != n:
        raise TLMultilingualError(f"evidence must list the {n} layers")
    for key, kind in (("stability", dict), ("confidence", dict), ("intervals", dict), ("signals", list),
                      ("by_signal", dict), ("warnings", list)):
        if not isinstance(data.get(key, kind()), kind):
            raise TLMultilingualError(f"{key} must be a {kind.__name__}")
    if not isinstance(data.get("constrained", True), bool):
        raise TLMultilingualError("constrained must be true or false")


def neuron_features(neurons: LanguageNeurons) -> pd.DataFrame:
    """Per layer: language neurons (specific or related), general neurons, and the
    two segmentation features ``f_language = log(1 + language)`` and
    ``f_general = general / d_mlp``."""
    language = neurons.membership.any(-1).sum(1).numpy().astype(float)
    general = neurons.general().per_layer().numpy().astype(float)
    return pd.DataFrame(
        {
            "language_neurons": language,
            "general_neurons": general,
            "f_language": np.log1p(language),
            "f_general": general / neurons.d_mlp,
        }
    )


def lens_features(lens: LensResult, target: str | None = None) -> pd.DataFrame:
    """Per layer: mean probability of the target answer and of English, and entropy.

    The target is ``target`` if given, else each prompt's own first answer language
    (the target language of the translation prompts), so prompts with different
    target languages can be pooled.
    """
    langs = list(lens.languages)
    if target is not None and target not in langs:
        raise TLMultilingualError(f"the lens did not track {target!r}; it tracked {langs}")
    if target is not None:
        column = torch.full((lens.probability.shape[0],), langs.index(target), dtype=torch.long)
    else:
        column = torch.tensor([langs.index(next(iter(p.answers))) if p is not None and p.answers else 0
                               for p in lens.prompts])
    rows = torch.arange(lens.probability.shape[0])
    frame = pd.DataFrame({"f_target": torch.nanmean(lens.probability[rows, :, column], dim=0).numpy()})
    if "en" in langs and target != "en":
        english = lens.probability[:, :, langs.index("en")]
        not_target = (column != langs.index("en"))[:, None].expand_as(english)
        frame["f_english"] = torch.nanmean(torch.where(not_target, english, torch.nan), dim=0).numpy()
    frame["f_entropy"] = lens.entropy.mean(0).numpy()
    return frame


def _standardise(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=float)
    x = np.where(np.isfinite(x), x, np.nanmean(np.where(np.isfinite(x), x, np.nan), 0) if len(x) else 0.0)
    x = np.nan_to_num(x)
    scale = x.std(0)
    return (x - x.mean(0)) / np.where(scale > 0, scale, 1.0)


# -- exact segmentation -------------------------------------------------------------


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
            has the smallest mean of segments 1-3) or ``"max_last"`` (segment 4 has the
            largest mean).

    Returns:
        The boundaries and whether the constraints could be met (if not, the
        unconstrained optimum).

    Raises:
        TLMultilingualError: with fewer than four layers or an unknown rule.
    """
    x = np.asarray(features, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if len(x) < 4:
        raise TLMultilingualError(f"four stages need at least four layers, got {len(x)}")
    for _, rule in constraints:
        if rule not in ("min_second", "max_last"):
            raise TLMultilingualError(f"unknown constraint {rule!r}")
    cost, sums = _costs(x[None])
    _, bounds = _dp(cost, 4)
    free = tuple(int(b) for b in bounds[0])
    if not constraints:
        return free, True  # type: ignore[return-value]
    found, _ = _constrained(cost[0], sums[0], constraints, free)  # type: ignore[arg-type]
    return (found, True) if found is not None else (free, False)  # type: ignore[return-value]


# -- fit quality ----------------------------------------------------------------------


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


# -- one signal's map -----------------------------------------------------------------


def _columns(frames: dict[str, pd.DataFrame]) -> tuple[np.ndarray, list[str]]:
    names: list[str] = []
    parts = []
    for frame in frames.values():
        cols = [c for c in frame.columns if c.startswith("f_")]
        names += cols
        parts.append(frame[cols].to_numpy(float))
    return _standardise(np.hstack(parts)), names


def _signatures_for(signals: Sequence[str], names: Sequence[str]) -> list[tuple[_Signature, int]]:
    return [(s, names.index(s.column)) for s in SIGNATURES if s.signal in signals and s.column in names]


def _fit(frames: dict[str, pd.DataFrame], signatures: bool) -> tuple[tuple[int, int, int], tuple[int, int, int], bool]:
    """(map boundaries, unconstrained boundaries, whether the map meets the signatures)."""
    x, names = _columns(frames)
    cost, sums = _costs(x[None])
    free = tuple(int(b) for b in _dp(cost, 4)[1][0])
    constraints = [(col, s.rule) for s, col in _signatures_for(list(frames), names)]
    if not constraints:
        return free, free, True  # type: ignore[return-value]
    found, _ = _constrained(cost[0], sums[0], constraints, free)  # type: ignore[arg-type]
    if not signatures:
        met = bool(_meets([_means(sums[0], c) for c, _ in constraints], [r for _, r in constraints], *free, len(x)))
        return free, free, met  # type: ignore[return-value]
    if found is None:
        return free, free, False  # type: ignore[return-value]
    return found, free, True  # type: ignore[return-value]


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


def _signal_map(
    signal: str, frames: dict[str, pd.DataFrame], evidence: pd.DataFrame, n: int, signatures: bool,
    n_null: int, seed: int,
) -> SignalMap:
    chosen, free, met = _fit(frames, signatures)
    x, names = _columns(frames)
    checks = tuple(_check(s, evidence, free, chosen, n) for s, _ in _signatures_for(list(frames), names))
    quality = _quality(x, chosen, n_null, seed)
    return SignalMap(signal, n, chosen, free, all(c.met for c in checks), checks, quality)


def _stability(fit: SignalMap, replicates: np.ndarray) -> None:
    for k, name in enumerate(_BOUNDARIES):
        fit.stability[name] = float((replicates[:, k] == fit.boundaries[k]).mean())
        low, high = resample.percentile_interval(replicates[:, k].astype(float), ci=0.90)
        fit.intervals[name] = (int(np.floor(low)), int(np.ceil(high)))


# -- warnings -------------------------------------------------------------------------


def _warnings(maps: dict[str, SignalMap], agreement: pd.DataFrame | None, alpha: float, tolerance: int) -> list[str]:
    out = []
    for name, fit in maps.items():
        label = _LABELS.get(name, name)
        n = fit.n_layers
        failed = [c for c in fit.checks if not c.holds]
        if "+" in name and failed:  # each signal's own map has already said where
            out.append(f"{label}: Zhang et al.'s (AAAI-26) signatures that do not hold in the data: "
                       + "; ".join(f'"{c.text}"' for c in failed) + ".")
        for check in failed if "+" not in name else ():
            out.append(f"{label}: Zhang et al.'s (AAAI-26) signature \"{check.text}\" does not hold in the data: {check.detail}.")
        if failed:
            if fit.boundaries != fit.unconstrained:
                out.append(f"{label}: imposing Zhang et al.'s (AAAI-26) signatures gives {_span_text(fit.boundaries, n)}; the best "
                           f"fit without them is {_span_text(fit.unconstrained, n)} (StageMap.unconstrained()).")
            elif not fit.constrained:
                out.append(f"{label}: no four-stage segmentation meets Zhang et al.'s (AAAI-26) signatures; the map is the best "
                           f"fit without them.")
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
        for row in agreement.itertuples():
            if abs(row.difference) > tolerance:
                stage = row.boundary.split("|")[1].replace("_", " ")
                out.append(f"The neuron-class and logit-lens maps disagree on where {stage} begins: layer "
                           f"{row.neurons} by the neurons, layer {row.lens} by the lens ({abs(row.difference)} "
                           f"layers apart).")
    return out


# -- the map --------------------------------------------------------------------------


def _reidentify(stats: ActivationStats, neurons: LanguageNeurons) -> LanguageNeurons:
    """The neurons re-identified on other statistics with the same recipe."""
    from ..neurons.identification import identify

    return identify(stats, **neurons.recipe)


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
    stats: ActivationStats | None = None,
    target: str | None = None,
    signatures: bool = True,
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
    `StageMap.warnings` and is raised as a [`StageWarning`][tl_multilingual.stages.segmentation.StageWarning].

    Args:
        neurons: identified neurons (the class-profile signal).
        lens: a `LensResult` (the logit-lens signal).
        stats: the statistics ``neurons`` came from, for the stability refits of the
            neuron signal (redrawn counts, neurons re-identified with the same recipe).
        target: the lens language to follow (default: each prompt's target).
        signatures: impose Zhang et al.'s (AAAI-26) signatures on the fit (they are checked and
            reported either way).
        n_boot: bootstrap refits for stability (0: none).
        n_null: null draws for each p-value of the fit quality (0: none).
        alpha: level below which a p-value counts as significant in the warnings.
        tolerance: layers by which the neuron and lens maps may disagree on a boundary
            before a warning.
        seed: seed of the refits and null draws.

    Returns:
        [`StageMap`][tl_multilingual.stages.segmentation.StageMap].

    Raises:
        TLMultilingualError: without any signal, with fewer than four layers, or with
            a lens and neurons of different layer counts.
    """
    neurons, lens = _legacy_arguments(neurons, lens)
    if neurons is None and lens is None:
        raise TLMultilingualError("map_stages needs neurons, a lens result, or both")
    if neurons is not None and stats is not None:
        check_compatible(stats.provenance, neurons.provenance, labels=("the statistics", "the neurons"))
        if tuple(stats.languages) != tuple(neurons.languages):
            raise TLMultilingualError(f"the statistics cover {stats.languages} but the neurons {neurons.languages}")
    frames: dict[str, pd.DataFrame] = {}
    if neurons is not None:
        frames["neurons"] = neuron_features(neurons)
    if lens is not None:
        frames["lens"] = lens_features(lens, target)
    n_layers = len(next(iter(frames.values())))
    if any(len(f) != n_layers for f in frames.values()):
        raise TLMultilingualError("the lens and the neurons come from models with different layer counts")
    if n_layers < 4:
        raise TLMultilingualError(f"four stages need at least four layers, got {n_layers}")
    evidence = pd.concat(list(frames.values()), axis=1)
    evidence.insert(0, "layer", range(n_layers))
    signals = tuple(frames)
    groups = {s: {s: frames[s]} for s in signals}
    if len(signals) > 1:
        groups["+".join(signals)] = frames
    maps = {name: _signal_map(name, group, evidence, n_layers, signatures, n_null, seed)
            for name, group in groups.items()}
    combined = maps["+".join(signals)]

    can_redraw = neurons is not None and stats is not None
    if n_boot > 0 and (can_redraw or lens is not None):
        generator = torch.Generator().manual_seed(seed)
        prompt_draws = resample.draws(lens.probability.shape[0], n_boot, seed) if lens is not None else None
        replicates: dict[str, list[tuple[int, int, int]]] = {name: [] for name in maps}
        for r in range(n_boot):
            boot = dict(frames)
            if can_redraw:
                boot["neurons"] = neuron_features(_reidentify(stats.redraw(generator), neurons))  # type: ignore[union-attr]
            if prompt_draws is not None:
                boot["lens"] = lens_features(lens.select(prompt_draws[r]), target)  # type: ignore[union-attr]
            for name in maps:
                replicates[name].append(_fit({s: boot[s] for s in groups[name]}, signatures)[0])
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
    if "neurons" in maps and "lens" in maps:
        agreement = pd.DataFrame({
            "boundary": list(_BOUNDARIES),
            "neurons": list(maps["neurons"].boundaries),
            "lens": list(maps["lens"].boundaries),
        })
        agreement["difference"] = agreement["lens"] - agreement["neurons"]
        agreement["agree"] = agreement["difference"].abs() <= tolerance
    cautions = tuple(_warnings(maps, agreement, alpha, tolerance))
    for sentence in cautions:
        warn(sentence, StageWarning)
    return StageMap(
        n_layers, combined.boundaries, evidence, dict(combined.stability), dict(combined.intervals),
        combined.constrained, signals, neurons.d_mlp if neurons is not None else None, maps, agreement, cautions,
    )


def _stage_at(boundaries: Sequence[int], n_layers: int, layer: int) -> str:
    for stage, span in _spans(boundaries, n_layers).items():
        if layer in span:
            return stage
    raise TLMultilingualError(f"layer {layer} is outside [0, {n_layers})")
