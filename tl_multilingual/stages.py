"""The four stages of multilingual inference (paper A), mapped onto layers.

Stages, in order: ``understanding`` (language-specific and -related neurons peak in
the first layers), ``shared_reasoning`` (general neurons dominate, language neurons
nearly absent), ``output_transformation`` (language neurons peak again) and
``vocabulary_output`` (the last layer(s), general neurons at their maximum).

:func:`map_stages` segments the layers into four contiguous stages from either or
both of two signals, each feature standardised across layers:

- neuron classes (:class:`LanguageNeurons`): per layer ``log(1 + language neurons)``
  (specific or related) and the fraction of general neurons;
- the logit lens (:class:`LensResult`): per layer the mean probability of the
  target-language answer, of the English answer, and the entropy.

Objective: the boundaries ``0 < b1 < b2 < b3 < n_layers`` minimise the squared error of
a piecewise-constant fit of the feature vectors (exhaustive search, exact), subject to
the stage signatures: with neuron features, shared reasoning has the fewest language
neurons of the first three stages and vocabulary output the most general neurons;
with lens features, vocabulary output has the most probable target answer. When no
segmentation meets them, the unconstrained optimum is used and ``constrained`` is
False. Confidence comes from refitting on bootstrap replicates: lens prompts resampled
with replacement, and activation counts redrawn (binomially, from the statistics'
probabilities and token counts), with the neurons re-identified at the same lambda.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import TLMultilingualError
from .masks import NeuronMask
from .neurons import LanguageNeurons
from .persist import write_text
from .provenance import check_compatible, check_fits
from .stats import ActivationStats

__all__ = ["STAGES", "StageMap", "map_stages", "segment", "neuron_features", "lens_features"]

STAGES = ("understanding", "shared_reasoning", "output_transformation", "vocabulary_output")
_BOUNDARIES = ("understanding|shared_reasoning", "shared_reasoning|output_transformation",
               "output_transformation|vocabulary_output")


@dataclass
class StageMap:
    """Layers of each stage, the evidence they rest on, and how sure each boundary is.

    Attributes:
        n_layers: number of layers.
        boundaries: first layer of the 2nd, 3rd and 4th stage.
        evidence: one row per layer: the raw features, the stage and, with bootstrap,
            ``stage_agreement`` (share of refits giving the layer the same stage) and
            ``boundary_share`` (share of refits in which some stage starts there).
        confidence: per boundary, the share of bootstrap refits that put it at exactly
            the same layer (empty without bootstrap).
        intervals: per boundary, the 5th-95th percentile of its layer over refits.
        constrained: whether the stage signatures could be met.
        signals: which signals were used (``"neurons"``, ``"lens"``).
    """

    n_layers: int
    boundaries: tuple[int, int, int]
    evidence: pd.DataFrame
    confidence: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[int, int]] = field(default_factory=dict)
    constrained: bool = True
    signals: tuple[str, ...] = ()
    d_mlp: int | None = None

    def layers(self, stage: str) -> range:
        """The layers of a stage."""
        edges = (0, *self.boundaries, self.n_layers)
        try:
            k = STAGES.index(stage)
        except ValueError as err:
            raise TLMultilingualError(f"unknown stage {stage!r}; stages are {STAGES}") from err
        return range(edges[k], edges[k + 1])

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

    @property
    def provenance(self) -> dict[str, Any]:
        """The shape of the model the map was made for (``d_mlp`` None when unknown)."""
        return {"shape": (self.n_layers, self.d_mlp)}

    def to_frame(self) -> pd.DataFrame:
        """One row per layer: ``layer``, ``stage`` and the evidence."""
        return self.evidence.copy()

    def to_dict(self) -> dict[str, Any]:
        """Everything as plain data (boundaries, confidence, evidence per layer)."""
        return {
            "n_layers": self.n_layers,
            "boundaries": list(self.boundaries),
            "stages": {s: [self.layers(s).start, self.layers(s).stop] for s in STAGES},
            "confidence": self.confidence,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "constrained": self.constrained,
            "signals": list(self.signals),
            "d_mlp": self.d_mlp,
            "evidence": self.evidence.to_dict("records"),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageMap:
        """From :meth:`to_dict`'s plain data, checking every field.

        Raises:
            TLMultilingualError: a field is missing or invalid.
        """
        _check_fields(data)
        return cls(
            int(data["n_layers"]), tuple(data["boundaries"]), pd.DataFrame(data["evidence"]),
            dict(data.get("confidence", {})), {k: tuple(v) for k, v in data.get("intervals", {}).items()},
            bool(data.get("constrained", True)), tuple(data.get("signals", ())), data.get("d_mlp"),
        )

    def save(self, path: str | Path) -> Path:
        """Save as JSON."""
        return write_text(path, json.dumps(self.to_dict(), indent=2, default=float))

    @classmethod
    def load(cls, path: str | Path) -> StageMap:
        """Load a map saved with :meth:`save`.

        Raises:
            TLMultilingualError: the file is missing, not JSON, or not a valid stage map.
        """
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, TLMultilingualError) as err:
            raise TLMultilingualError(f"{path} is not a saved stage map: {err}") from err

    def __repr__(self) -> str:
        spans = ", ".join(f"{s}={self.layers(s).start}-{self.layers(s).stop - 1}" for s in STAGES)
        return f"StageMap({spans})"


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
    for key, kind in (("confidence", dict), ("intervals", dict), ("signals", list)):
        if not isinstance(data.get(key, kind()), kind):
            raise TLMultilingualError(f"{key} must be a {kind.__name__}")
    if not isinstance(data.get("constrained", True), bool):
        raise TLMultilingualError("constrained must be true or false")


def neuron_features(neurons: LanguageNeurons) -> pd.DataFrame:
    """Per layer: language neurons (specific or related), general neurons, and the
    two segmentation features."""
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


def lens_features(lens: Any, target: str | None = None) -> pd.DataFrame:
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
    scale = features.std(0)
    return (features - features.mean(0)) / np.where(scale > 0, scale, 1.0)


def segment(
    features: np.ndarray,
    constraints: Sequence[tuple[int, str]] = (),
) -> tuple[tuple[int, int, int], bool]:
    """Optimal 4-segment piecewise-constant fit of ``features`` ``[n_layers, n_features]``.

    ``constraints`` are ``(feature column, rule)`` with rule ``"min_second"`` (segment 2
    has the smallest mean of segments 1-3) or ``"max_last"`` (segment 4 has the largest
    mean). Returns the boundaries and whether the constraints could be met.
    """
    x = np.asarray(features, dtype=float)
    n = len(x)
    if n < 4:
        raise TLMultilingualError(f"four stages need at least four layers, got {n}")
    sums = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, 0)])
    squares = np.concatenate([[0.0], np.cumsum((x**2).sum(1))])
    combos = np.array(list(itertools.combinations(range(1, n), 3)))
    edges = np.column_stack([np.zeros(len(combos), int), combos, np.full(len(combos), n)])
    lo, hi = edges[:, :-1], edges[:, 1:]  # [combo, segment]
    seg_sum = sums[hi] - sums[lo]  # [combo, segment, feature]
    length = (hi - lo)[..., None]
    cost = (squares[hi] - squares[lo]).sum(1) - ((seg_sum**2) / length).sum((1, 2))
    means = seg_sum / length
    ok = np.ones(len(combos), bool)
    for column, rule in constraints:
        m = means[:, :, column]
        if rule == "min_second":
            ok &= (m[:, 1] <= m[:, 0]) & (m[:, 1] <= m[:, 2])
        elif rule == "max_last":
            ok &= m[:, 3] >= m.max(1)
        else:
            raise TLMultilingualError(f"unknown constraint {rule!r}")
    met = bool(ok.any())
    best = np.argmin(np.where(ok, cost, np.inf)) if met else np.argmin(cost)
    return tuple(int(b) for b in combos[best]), met  # type: ignore[return-value]


def _fit(neuron_frame: pd.DataFrame | None, lens_frame: pd.DataFrame | None) -> tuple[tuple[int, int, int], bool]:
    parts, constraints = [], []
    if neuron_frame is not None:
        constraints += [(0, "min_second"), (1, "max_last")]
        parts.append(neuron_frame[["f_language", "f_general"]].to_numpy())
    if lens_frame is not None:
        constraints.append((sum(p.shape[1] for p in parts), "max_last"))
        parts.append(lens_frame.filter(like="f_").to_numpy())
    return segment(_standardise(np.hstack(parts)), constraints)


def map_stages(
    model: Any = None,
    neurons: LanguageNeurons | None = None,
    lens: Any = None,
    *,
    stats: ActivationStats | None = None,
    target: str | None = None,
    n_boot: int = 100,
    seed: int = 0,
) -> StageMap:
    """Map the layers onto the four stages (see the module docstring).

    Args:
        model: a :class:`ModelAdapter` (or None); the map is attached as ``model.stages``.
        neurons: identified neurons (the class-profile signal).
        lens: a :class:`LensResult` (the logit-lens signal).
        stats: the statistics ``neurons`` came from, for bootstrap confidence of the
            neuron signal.
        target: the lens language to follow (default: the first non-English one).
        n_boot: bootstrap refits (0: no confidence).
    """
    if neurons is None and lens is None:
        raise TLMultilingualError("map_stages needs neurons, a lens result, or both")
    if neurons is not None and stats is not None:
        check_compatible(stats.provenance, neurons.provenance, labels=("the statistics", "the neurons"))
        if tuple(stats.languages) != tuple(neurons.languages):
            raise TLMultilingualError(f"the statistics cover {stats.languages} but the neurons {neurons.languages}")
    neuron_frame = neuron_features(neurons) if neurons is not None else None
    lens_frame = lens_features(lens, target) if lens is not None else None
    n_layers = len(neuron_frame if neuron_frame is not None else lens_frame)
    if neuron_frame is not None and lens_frame is not None and len(lens_frame) != n_layers:
        raise TLMultilingualError("the lens and the neurons come from models with different layer counts")
    boundaries, constrained = _fit(neuron_frame, lens_frame)

    replicates = []
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    can_redraw = neurons is not None and stats is not None
    if n_boot > 0 and (can_redraw or lens is not None):
        for _ in range(n_boot):
            nf, lf = neuron_frame, lens_frame
            if can_redraw:
                redrawn = _reidentify(stats.redraw(generator), neurons)
                nf = neuron_features(redrawn)
            if lens is not None:
                picks = rng.integers(0, lens.probability.shape[0], lens.probability.shape[0])
                lf = lens_features(lens.select(picks), target)
            replicates.append(_fit(nf, lf)[0])
    evidence = pd.concat([f for f in (neuron_frame, lens_frame) if f is not None], axis=1)
    evidence.insert(0, "layer", range(n_layers))
    stage_map = StageMap(
        n_layers, boundaries, evidence, constrained=constrained,
        signals=tuple(s for s, f in (("neurons", neuron_frame), ("lens", lens_frame)) if f is not None),
        d_mlp=neurons.d_mlp if neurons is not None else None,
    )
    stage_map.evidence.insert(1, "stage", [stage_map.stage_of(layer) for layer in range(n_layers)])
    if replicates:
        reps = np.array(replicates)
        for k, name in enumerate(_BOUNDARIES):
            stage_map.confidence[name] = float((reps[:, k] == boundaries[k]).mean())
            low, high = np.quantile(reps[:, k], [0.05, 0.95])
            stage_map.intervals[name] = (int(low), int(high))
        shares = {s: np.zeros(n_layers) for s in STAGES}
        for b in replicates:
            edges = (0, *b, n_layers)
            for k, s in enumerate(STAGES):
                shares[s][edges[k] : edges[k + 1]] += 1 / len(replicates)
        stage_map.evidence["stage_agreement"] = [
            shares[stage_map.stage_of(layer)][layer] for layer in range(n_layers)
        ]
        starts = np.bincount(reps.reshape(-1), minlength=n_layers)[:n_layers] / len(replicates)
        stage_map.evidence["boundary_share"] = starts
    if model is not None:
        from .adapters import adapt

        lm = adapt(model)
        check_fits(lm, stage_map, what="the stage map")
        lm.stages = stage_map
    return stage_map


def _reidentify(stats: ActivationStats, neurons: LanguageNeurons) -> LanguageNeurons:
    from .identify import identify

    params = neurons.params
    kwargs = {"top_rate": params.get("top_rate", 0.01), "bar_ratio": params.get("bar_ratio", 0.95)}
    if neurons.method == "ternary":
        kwargs["lam"] = neurons.lam
    rate = params.get("filter_rate")
    kwargs["prefilter"] = rate is not None
    if rate is not None:
        kwargs["filter_rate"] = rate
    return identify(stats, method=neurons.method if neurons.method in ("ternary", "lape") else "ternary", **kwargs)
