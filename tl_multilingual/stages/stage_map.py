"""The four stages of multilingual inference (Zhang et al., AAAI-26), and maps of a
model's layers onto them.

Stages, in order ([`STAGES`][tl_multilingual.stages.stage_map.STAGES]): ``understanding`` (language-specific and
-related neurons peak in the first layers), ``shared_reasoning`` (general neurons
dominate, language neurons nearly absent), ``output_transformation`` (language
neurons peak again) and ``vocabulary_output`` (the last layer(s), general neurons at
their maximum).

A [`StageMap`][tl_multilingual.stages.stage_map.StageMap] gives the layers of each stage by three boundaries
``0 < b1 < b2 < b3 < n_layers``, the first layers of the 2nd, 3rd and 4th stage. A map
made by [`map_stages()`][tl_multilingual.stages.mapping.map_stages] also keeps its evidence: each signal's own fit
([`SignalMap`][tl_multilingual.stages.stage_map.SignalMap]) beside its unconstrained optimum, the signature checks
([`SignatureCheck`][tl_multilingual.stages.stage_map.SignatureCheck]), the fit quality against a null
([`FitQuality`][tl_multilingual.stages.stage_map.FitQuality]), the stability of each boundary under resampling, where
the signals agree, every caution as a sentence, which fit it is (``choice``) and a
[`Verdict`][tl_multilingual.stages.stage_map.Verdict] (supported, weak or not supported, with its reasons; the
rule is in [`tl_multilingual.stages.mapping`][tl_multilingual.stages.mapping]). A map can also be given by hand
([`StageMap.from_boundaries()`][tl_multilingual.stages.stage_map.StageMap.from_boundaries], e.g. a paper's stages for a
model). Maps save as JSON, and every field is checked when one is read back.

Experiments take a stage map explicitly: restrict them with
``layers=stage_map.layers("shared_reasoning")`` (or a mask with
``stage_map.mask("shared_reasoning")``). [`stage_effects()`][tl_multilingual.experiments.stage_deactivation.stage_effects] gives the
causal evidence per stage. Both refuse a map whose verdict is ``"not supported"``
unless told ``allow_unsupported=True``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TLMultilingualError, warn
from ..hub import HubMixin
from ..neurons.masks import NeuronMask
from ..persist import read_json, write_text

__all__ = ["STAGES", "StageMap", "SignalMap", "FitQuality", "SignatureCheck", "Verdict", "VERDICTS"]

STAGES = ("understanding", "shared_reasoning", "output_transformation", "vocabulary_output")
"""The four stages of multilingual inference, in order (Zhang et al., AAAI-26)."""
_BOUNDARIES = ("understanding|shared_reasoning", "shared_reasoning|output_transformation",
               "output_transformation|vocabulary_output")


@dataclass(frozen=True)
class SignatureCheck:
    """One of Zhang et al.'s (AAAI-26) signatures, checked on a map.

    Attributes:
        name: the signature's key (see [`SIGNATURES`][tl_multilingual.stages.signatures.SIGNATURES]).
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


VERDICTS = ("supported", "weak", "not supported", "given")
"""The levels of a [`Verdict`][tl_multilingual.stages.stage_map.Verdict], from best to worst (``"given"``:
a map given by hand, which no data have tested)."""


@dataclass(frozen=True)
class Verdict:
    """What the data say about a stage map, in a word and its reasons.

    Levels (see the module docstring of [`tl_multilingual.stages.mapping`][tl_multilingual.stages.mapping] for
    the rule): ``"supported"`` (the fit beats layer-shuffled features, four stages beat
    three and two, the signatures hold and the signals agree), ``"weak"`` (it beats
    chance but one of the others fails, or it was not tested against the null),
    ``"not supported"`` (no better than chance, or stages the signatures force), and
    ``"given"`` (a map given by hand: nothing tested).

    Attributes:
        level: one of [`VERDICTS`][tl_multilingual.stages.stage_map.VERDICTS].
        reasons: short reasons, e.g. ``"four stages no better than three (p = 0.4)"``.
    """

    level: str
    reasons: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        """Whether the data support the map (``"supported"`` or ``"weak"``)."""
        return self.level in ("supported", "weak")

    def __str__(self) -> str:
        return self.level + (f": {'; '.join(self.reasons)}" if self.reasons else "")

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "reasons": list(self.reasons)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        if data.get("level") not in VERDICTS:
            raise TLMultilingualError(
                f"unknown verdict {data.get('level')!r}; verdicts are {VERDICTS}")
        return cls(str(data["level"]), tuple(str(r) for r in data.get("reasons", ())))


_GIVEN = Verdict("given", ("given by hand, not tested against data",))


@dataclass
class SignalMap:
    """The four-stage fit of one signal (``"neurons"``, ``"lens"``) or of both
    (``"neurons+lens"``).

    Attributes:
        signal: which features were fitted.
        n_layers: number of layers.
        boundaries: first layer of the 2nd, 3rd and 4th stage of this map: the fit
            ``choice`` names (the signature-constrained or the unconstrained one).
        unconstrained: the same for the best fit without Zhang et al.'s (AAAI-26) signatures.
        constrained: whether ``boundaries`` meet every signature of the signal.
        checks: every signature of the signal, checked.
        quality: fit quality of ``boundaries`` against a null (None when not computed).
        stability: per boundary, the share of bootstrap refits that put it at exactly
            the same layer (empty without refits). Reproducibility, not support.
        intervals: per boundary, the 5th-95th percentile of its layer over refits.
        imposed: the best fit that meets every signature (None when none does).
        imposed_quality: its fit quality (None when not computed or no such fit).
        unconstrained_quality: fit quality of ``unconstrained``.
        choice: ``"constrained"`` (``boundaries`` is ``imposed``) or
            ``"unconstrained"``.
        choice_reason: why, in words.
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
    imposed: tuple[int, int, int] | None = None
    imposed_quality: FitQuality | None = None
    unconstrained_quality: FitQuality | None = None
    choice: str = "constrained"
    choice_reason: str = ""

    def quality_of(self, boundaries: Sequence[int]) -> FitQuality | None:
        """The fit quality of ``boundaries`` if they are one of this signal's fits."""
        b = tuple(boundaries)
        if b == tuple(self.boundaries):
            return self.quality
        if b == tuple(self.unconstrained):
            return self.unconstrained_quality
        if self.imposed is not None and b == tuple(self.imposed):
            return self.imposed_quality
        return None

    def forced(self, boundaries: Sequence[int] | None = None) -> list[str]:
        """The stages that are a single layer in ``boundaries`` (default: this map)
        but not in the unconstrained fit: stages only the signatures make."""
        b = tuple(self.boundaries if boundaries is None else boundaries)
        if b == tuple(self.unconstrained):
            return []
        mine, free = _spans(b, self.n_layers), _spans(self.unconstrained, self.n_layers)
        return [s for s in STAGES if len(mine[s]) == 1 and mine[s] != free[s]]

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
            "imposed": list(self.imposed) if self.imposed is not None else None,
            "imposed_quality": (self.imposed_quality.to_dict()
                                if self.imposed_quality is not None else None),
            "unconstrained_quality": (self.unconstrained_quality.to_dict()
                                      if self.unconstrained_quality is not None else None),
            "choice": self.choice, "choice_reason": self.choice_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignalMap:
        def quality(key: str) -> FitQuality | None:
            return FitQuality.from_dict(data[key]) if data.get(key) else None

        imposed = data.get("imposed", data["boundaries"] if data.get("constrained", True) else None)
        return cls(
            data["signal"], int(data["n_layers"]), tuple(data["boundaries"]), tuple(data["unconstrained"]),
            bool(data["constrained"]), tuple(SignatureCheck(**c) for c in data.get("checks", [])),
            quality("quality"),
            {k: float(v) for k, v in data.get("stability", {}).items()},
            {k: tuple(v) for k, v in data.get("intervals", {}).items()},
            tuple(imposed) if imposed is not None else None,  # type: ignore[arg-type]
            quality("imposed_quality"), quality("unconstrained_quality"),
            str(data.get("choice", "constrained")), str(data.get("choice_reason", "")),
        )


@dataclass
class StageMap(HubMixin):
    """Layers of each stage, each signal's own map, how well they fit, and cautions.

    Attributes:
        n_layers: number of layers.
        boundaries: first layer of the 2nd, 3rd and 4th stage (of the map fitted on
            every signal given).
        evidence: one row per layer: the raw features, the ``stage``, each signal's
            stage (``stage_neurons``, ``stage_lens``, ``stage_similarity``) and, with refits,
            ``stage_agreement`` (share of refits giving the layer the same stage) and
            ``boundary_share`` (share of refits in which some stage starts there).
        stability: per boundary, the share of bootstrap refits that put it at exactly
            the same layer (empty without refits): how reproducible the boundary is,
            not whether the data support it (see [`quality`][tl_multilingual.stages.stage_map.StageMap.quality]).
        intervals: per boundary, the 5th-95th percentile of its layer over refits.
        constrained: whether the boundaries meet Zhang et al.'s (AAAI-26) signatures.
        signals: which signals were used (``"neurons"``, ``"lens"``, ``"similarity"``).
        d_mlp: neurons per layer (for [`mask()`][tl_multilingual.stages.stage_map.StageMap.mask]).
        by_signal: each signal's own map ([`SignalMap`][tl_multilingual.stages.stage_map.SignalMap]), and the combined
            one (``"neurons+lens"``, ``"neurons+lens+similarity"``, ...) when several were
            given.
        agreement: per boundary, where each signal's map puts it and how far apart
            (``difference``: lens - neurons with those two signals, else the largest
            distance between two signals; ``agree``: within ``tolerance``); None with
            one signal.
        warnings: every caution, as plain sentences (empty when all is well); each was
            also raised as a [`StageWarning`][tl_multilingual.stages.signatures.StageWarning] when the map was made.
        verdict: what the data say about this map ([`Verdict`][tl_multilingual.stages.stage_map.Verdict]):
            shown by ``repr``, [`describe()`][tl_multilingual.stages.stage_map.StageMap.describe],
            [`summary()`][tl_multilingual.stages.stage_map.StageMap.summary], the study's report and figures;
            experiments refuse a map the data do not support unless told to proceed.
        choice: which fit the boundaries are: ``"constrained"`` (Zhang et al.'s
            signatures imposed), ``"unconstrained"`` or ``"given"`` (by hand).
        alpha: the level the verdict and the warnings test p-values at.
        tolerance: layers by which two signals' maps may disagree on a boundary.
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
    verdict: Verdict = _GIVEN
    choice: str = "given"
    alpha: float = 0.05
    tolerance: int = 2

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
        """Fit quality of these boundaries in [`fit`][tl_multilingual.stages.stage_map.StageMap.fit] (None for a map given
        by hand)."""
        fit = self.fit
        return fit.quality_of(self.boundaries) if fit is not None else None

    @property
    def supported(self) -> bool:
        """Whether the data support this map (verdict ``"supported"`` or ``"weak"``)."""
        return self.verdict.supported

    def require_support(self, what: str, override: str = "allow_unsupported=True") -> None:
        """Refuse a map the data do not support: the one check experiments make.

        Raises:
            TLMultilingualError: when the verdict is ``"not supported"``; the message
                names the verdict, the map the evidence supports and ``override``.
        """
        if self.verdict.level != "not supported":
            return
        better = ""
        fit = self.fit
        if fit is not None and fit.boundaries != self.boundaries:
            better = (" The map the evidence supports is "
                      f"{_span_text(fit.boundaries, self.n_layers)}.")
        raise TLMultilingualError(
            f"{what}: the data do not support this stage map "
            f"({_span_text(self.boundaries, self.n_layers)}; verdict: {self.verdict}).{better} "
            f"Pass {override} to proceed with it anyway."
        )

    @property
    def confidence(self) -> dict[str, float]:
        """Deprecated name of ``stability`` (it measures stability under resampling)."""
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

    def mask(
        self, stage: str, d_mlp: int | None = None, *, allow_unsupported: bool = False
    ) -> NeuronMask:
        """Every neuron of the stage's layers (combine with ``&`` to restrict a class).

        Raises:
            TLMultilingualError: for an unknown stage, without ``d_mlp``, or for a map
                the data do not support (verdict ``"not supported"``) unless
                ``allow_unsupported``.
        """
        if not allow_unsupported:
            self.require_support(f"mask({stage!r})")
        width = d_mlp or self.d_mlp
        if width is None:
            raise TLMultilingualError("this stage map does not know d_mlp: pass it")
        return NeuronMask.full(self.n_layers, width).restrict(self.layers(stage))

    def _other(self, boundaries: tuple[int, int, int], choice: str, constrained: bool) -> StageMap:
        fit = self.fit
        assert fit is not None
        if boundaries == self.boundaries:
            return self
        keep = boundaries == fit.boundaries  # the signal's own default: its refits apply
        out = replace(self, boundaries=boundaries, stability=dict(fit.stability) if keep else {},
                      intervals=dict(fit.intervals) if keep else {}, constrained=constrained,
                      evidence=self.evidence.copy(), choice=choice)
        out.evidence["stage"] = [out.stage_of(layer) for layer in range(self.n_layers)]
        out.verdict = _verdict(fit, boundaries, self.agreement, self.alpha)
        return out

    def unconstrained(self) -> StageMap:
        """The best fit without Zhang et al.'s (AAAI-26) signatures, as a map of its own (same
        evidence and warnings, its own verdict)."""
        fit = self.fit
        if fit is None:
            return self
        return self._other(fit.unconstrained, "unconstrained", all(c.holds for c in fit.checks))

    def constrained_map(self) -> StageMap:
        """The best fit that meets Zhang et al.'s (AAAI-26) signatures, as a map of its own
        (same evidence and warnings, its own verdict), whether or not the data support it.

        Raises:
            TLMultilingualError: when no four-stage segmentation meets the signatures.
        """
        fit = self.fit
        if fit is None:
            return self
        if fit.imposed is None:
            raise TLMultilingualError(
                "no four-stage segmentation meets Zhang et al.'s (AAAI-26) signatures")
        return self._other(fit.imposed, "constrained", True)

    def describe(self) -> str:
        """The stages in words with the verdict: ``understanding 0-4, shared reasoning
        5-17, ... (supported)``."""
        return f"{_span_text(self.boundaries, self.n_layers)} ({self.verdict})"

    def label(self) -> str:
        """Which map this is, its stages and verdict, for captions and results, e.g.
        ``combined neuron-class and logit-lens map, the best fit without Zhang et al.'s
        (AAAI-26) signatures: understanding 0-10, ... (weak: ...)``."""
        if self.choice == "given" or not self.signals:
            if self.verdict.level != "given":
                return f"stage map given by hand: {self.describe()}"
            spans = _span_text(self.boundaries, self.n_layers)
            return f"stage map given by hand: {spans} (not tested against data)"
        fits = {"constrained": "with Zhang et al.'s (AAAI-26) signatures imposed",
                "unconstrained": "the best fit without Zhang et al.'s (AAAI-26) signatures"}
        which = fits.get(self.choice, self.choice)
        names = {"neurons": "neuron-class", "lens": "logit-lens",
                 "similarity": "representation-similarity"}
        source = " and ".join(names.get(s, s) for s in self.signals)
        combined = "combined " if len(self.signals) > 1 else ""
        return f"{combined}{source} map, {which}: {self.describe()}"

    def summary(self) -> pd.DataFrame:
        """One row per map (each signal alone, then combined): its stages, which fit it
        is, its verdict, the unconstrained and the signature-constrained fits, whether the
        signatures are met, fit quality and stability."""
        rows = []
        for name, fit in self.by_signal.items():
            q = fit.quality
            row: dict[str, Any] = {"map": name, "stages": fit.describe(), "choice": fit.choice,
                                   "verdict": str(self.verdict) if name == "+".join(self.signals)
                                   else str(_signal_verdict(fit, self.alpha)),
                                   "unconstrained": _span_text(fit.unconstrained, fit.n_layers),
                                   "constrained_fit": (_span_text(fit.imposed, fit.n_layers)
                                                       if fit.imposed is not None else None),
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
            "verdict": self.verdict.to_dict(),
            "choice": self.choice,
            "alpha": self.alpha,
            "tolerance": self.tolerance,
            "evidence": self.evidence.to_dict("records"),
        }

    @property
    def provenance(self) -> dict[str, Any]:
        """The shape of the model the map was made for (``d_mlp`` None when unknown)."""
        return {"shape": (self.n_layers, self.d_mlp)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageMap:
        """From [`to_dict()`][tl_multilingual.stages.stage_map.StageMap.to_dict]'s plain data, checking every field.

        Raises:
            TLMultilingualError: a field is missing or invalid.
        """
        _check_fields(data)
        stability = data.get("stability", data.get("confidence", {}))  # "confidence": older files
        out = cls(
            int(data["n_layers"]), tuple(data["boundaries"]), pd.DataFrame(data["evidence"]),
            dict(stability), {k: tuple(v) for k, v in data.get("intervals", {}).items()},
            bool(data.get("constrained", True)), tuple(data.get("signals", ())), data.get("d_mlp"),
            {k: SignalMap.from_dict(v) for k, v in data.get("by_signal", {}).items()},
            pd.DataFrame(data["agreement"]) if data.get("agreement") is not None else None,
            tuple(data.get("warnings", ())),
            Verdict.from_dict(data["verdict"]) if data.get("verdict") else _GIVEN,
            str(data.get("choice", "given" if not data.get("by_signal") else "constrained")),
            float(data.get("alpha", 0.05)), int(data.get("tolerance", 2)),
        )
        if not data.get("verdict") and out.fit is not None:  # saved before verdicts: judge it now

            out.verdict = _verdict(out.fit, out.boundaries, out.agreement, out.alpha)
        return out

    def save(self, path: str | Path) -> Path:
        """Save as JSON."""
        return write_text(path, json.dumps(self.to_dict(), indent=2, default=_json_default))

    @classmethod
    def load(cls, path: str | Path) -> StageMap:
        """Load a map saved with [`save()`][tl_multilingual.stages.stage_map.StageMap.save] (its warnings are kept, not raised again).

        Raises:
            TLMultilingualError: if ``path`` holds no saved stage map.
        """
        try:
            return cls.from_dict(read_json(path, error=TLMultilingualError))
        except (OSError, ValueError, KeyError, TypeError, TLMultilingualError) as err:
            raise TLMultilingualError(f"{path} is not a saved stage map: {err}") from err

    def __repr__(self) -> str:
        spans = ", ".join(f"{s}={self.layers(s).start}-{self.layers(s).stop - 1}" for s in STAGES)
        note = f", {len(self.warnings)} warnings" if self.warnings else ""
        return f"StageMap({spans}, {self.verdict.level}{note})"


def _signal_verdict(fit: SignalMap, alpha: float) -> Verdict:

    return _verdict(fit, fit.boundaries, None, alpha)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return str(value)


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
    if not isinstance(data.get("verdict", {}), dict):
        raise TLMultilingualError("verdict must be an object")


_COUNT = {3: "three", 2: "two"}


def _stage_names(stages: Sequence[str]) -> str:
    return ", ".join(s.replace("_", " ") for s in stages)


def _rejections(fit: SignalMap, boundaries: Sequence[int], alpha: float) -> list[str]:
    """Why the data reject ``boundaries`` (one of ``fit``'s maps); empty when they do not.

    The rule (the module docstring of `mapping` states it): a map is rejected when its
    fit is no better than layer-shuffled features (p >= alpha), when a stage is a
    single layer only because the signatures force it, or, for a map the signatures
    moved away from the unconstrained fit, when it explains less of the features'
    variation than the best fit with three stages (imposing the signatures costs more
    than losing a stage)."""
    b = tuple(boundaries)
    out = []
    forced = fit.forced(b)
    if forced:
        out.append(f"one-layer {_stage_names(forced)} only the signatures force")
    q = fit.quality_of(b)
    if q is not None and np.isfinite(q.p_value) and q.p_value >= alpha:
        out.append(f"no better than layer-shuffled features (p = {q.p_value:.2g})")
    if q is not None and b != tuple(fit.unconstrained) and np.isfinite(q.explained):
        three = q.explained_by_stages.get(3, np.nan)
        if np.isfinite(three) and q.explained < three - 1e-12:
            out.append(f"explains {q.explained:.0%} of the variation, less than the best three "
                       f"stages ({three:.0%})")
    return out


def _verdict(fit: SignalMap, boundaries: Sequence[int], agreement: pd.DataFrame | None,
             alpha: float) -> Verdict:
    """The verdict on ``boundaries`` (one of ``fit``'s maps): ``"not supported"`` with
    the reasons ``_rejections`` gives (or four layers, where nothing can be tested);
    ``"weak"`` when four stages are no better than three or two, a signature does not
    hold in the data, the signals disagree beyond the tolerance, or no null was drawn;
    else ``"supported"``."""
    b = tuple(boundaries)
    bad = _rejections(fit, b, alpha)
    if fit.n_layers == 4:
        bad.insert(0, "four layers: the only segmentation there is")
    weak: list[str] = []
    q = fit.quality_of(b)
    if fit.n_layers > 4 and (q is None or not np.isfinite(q.p_value)):
        weak.append("not tested against layer-shuffled features")
    elif q is not None and not bad:
        for k in (3, 2):
            p = q.beats.get(k, np.nan)
            if np.isfinite(p) and p >= alpha:
                weak.append(f"four stages no better than {_COUNT[k]} (p = {p:.2g})")
    failed = [c for c in fit.checks if not c.holds]
    if failed and not bad:
        if b == tuple(fit.unconstrained):
            weak.append("signatures that do not hold: " + "; ".join(c.text for c in failed))
        else:
            weak.append("signatures that hold only when imposed: "
                        + "; ".join(c.text for c in failed))
    if agreement is not None and len(agreement) and not bool(agreement["agree"].all()):
        weak.append(f"signals disagree by {int(agreement['difference'].abs().max())} layers")
    level = "not supported" if bad else "weak" if weak else "supported"
    return Verdict(level, tuple(bad + weak))
