"""Deactivation experiments of Zhang et al. (AAAI-26) (Fig. 2) and LAPE, one call each.

[`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix] deactivates, for every language, a class of its neurons and
measures every evaluated language, against the unmodified model and against random
neuron sets of the same size per layer (the control). Effects come with paired
bootstrap intervals over texts (or items).

Variants name neuron classes joined with ``+``: Zhang et al.'s (AAAI-26) ``"specific"``,
``"specific+related"`` and ``"specific+related+general"``; LAPE's ``"language"``
(all of a language's selected neurons); any of ``specific``, ``related``,
``general``, ``language``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import resample
from ..causal.evaluate import choice_scores, text_nll
from ..causal.interventions import Layers, ablate
from ..errors import IdentificationError, SaveError, StatsError, TLMultilingualError
from ..hub import HubMixin
from ..inputs.corpus import Corpus
from ..model.adapters import ModelAdapter, adapt
from ..model.tokens import Overflow
from ..neurons.classes import MASK_NAMES, LanguageNeurons
from ..neurons.masks import NeuronMask, parse_variant
from ..neurons.stats import ActivationStats
from ..persist import atomic_folder, read_json, recover
from ..provenance import check_fits
from .engine import (
    RunStore,
    controlled_runs,
    inputs_key,
    load_frame,
    paired_interval,
    save_frame,
    variant_rows,
)

__all__ = ["deactivation_matrix", "DeactivationResult", "variant_mask"]

_KINDS = ("tl_multilingual.DeactivationResult", "tl_multilingual.AblationResult")  # the second: 0.1.0 saves
_FILES = ("cells.csv", "controls.csv", "result.json")

Metric = Literal["perplexity", "accuracy"]
# A metric from summed per-unit numerators and denominators (perplexity: exp(nll / tokens)).
Aggregate = Callable[[np.ndarray, np.ndarray], np.ndarray]


def variant_mask(neurons: LanguageNeurons, variant: str, language: str) -> NeuronMask:
    """The union of the classes named in ``variant`` (``"specific+related"``) for ``language``.

    Raises:
        MaskError: for a variant that names no class or an unknown one
            ([`tl_multilingual.neurons.masks.parse_variant()`][tl_multilingual.neurons.masks.parse_variant]).
    """
    mask = NeuronMask.empty(neurons.n_layers, neurons.d_mlp)
    for part in parse_variant(variant, MASK_NAMES):
        mask = mask | neurons.mask(part, None if part == "general" else language)
    mask.name = f"{language}: {variant}"
    return mask


class _Evaluation:
    """Per-unit numerators and denominators of a metric, and how to aggregate them."""

    def __init__(self, data: Corpus | Mapping[str, Sequence[Any]], metric: Metric, batch_size: int,
                 policy: dict[str, Any] | None = None):
        self.data, self.metric, self.batch_size = data, metric, batch_size
        self.policy = policy or {}  # max_length, overflow

    def units(self, lm: ModelAdapter) -> pd.DataFrame:
        if self.metric == "perplexity":
            frame = text_nll(lm, self.data, batch_size=self.batch_size, **self.policy)
            return frame.rename(columns={"text": "unit", "nll": "num", "tokens": "den"})
        frame = choice_scores(lm, self.data, batch_size=self.batch_size, **self.policy)
        return pd.DataFrame(
            {"language": frame["language"], "unit": frame["item"], "num": frame["correct"].astype(float), "den": 1.0}
        )

    def aggregate(self, num: np.ndarray, den: np.ndarray) -> np.ndarray:
        ratio = num / np.maximum(den, 1e-12)
        return np.exp(ratio) if self.metric == "perplexity" else ratio


@dataclass
class DeactivationResult(HubMixin):
    """Outcome of [`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix].

    Attributes:
        frame: one row per (variant, ablated language, evaluated language): the
            neurons deactivated, baseline and intervened values, absolute and relative
            change with a bootstrap interval, and the random-control change.
        controls: one row per control seed.
        metric: ``"perplexity"`` or ``"accuracy"``.
    """

    frame: pd.DataFrame
    controls: pd.DataFrame
    metric: str

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``cells.csv``, ``controls.csv``, ``result.json``
        (atomically: the three files are replaced together)."""
        folder = Path(path)
        with atomic_folder(folder, replaceable=lambda p: set(os.listdir(p)) <= set(_FILES)) as staging:
            (staging / "cells.csv").write_text(self.frame.to_csv(index=False), encoding="utf-8")
            (staging / "controls.csv").write_text(self.controls.to_csv(index=False), encoding="utf-8")
            (staging / "result.json").write_text(
                json.dumps({"kind": "tl_multilingual.DeactivationResult", "metric": self.metric}), encoding="utf-8"
            )
        return folder

    @classmethod
    def load(cls, path: str | Path) -> DeactivationResult:
        """Load a result saved with [`save()`][tl_multilingual.experiments.deactivation.DeactivationResult.save].

        Raises:
            SaveError: the folder is missing, damaged, or not an ablation result.
        """
        folder = Path(path)
        recover(folder)
        try:
            meta = read_json(folder / "result.json")
            frame, controls = pd.read_csv(folder / "cells.csv"), pd.read_csv(folder / "controls.csv")
        except (OSError, ValueError) as err:  # ValueError: JSON, UTF-8 and CSV parsing
            raise SaveError(f"{folder} is not a saved ablation result: {err}") from err
        if not isinstance(meta, dict) or meta.get("kind") not in _KINDS:
            raise SaveError(f"{folder / 'result.json'} is not the record of an ablation result")
        if meta.get("metric") not in ("perplexity", "accuracy"):
            raise SaveError(f"{folder / 'result.json'}: metric must be 'perplexity' or 'accuracy', "
                            f"got {meta.get('metric')!r:.60}")
        missing = [c for c in ("variant", "ablated", "evaluated") if c not in frame.columns]
        if missing:
            raise SaveError(f"{folder / 'cells.csv'} lacks the columns {missing}")
        return cls(frame, controls, meta["metric"])

    def matrix(self, variant: str | None = None, value: str = "relative_change") -> pd.DataFrame:
        """Ablated languages (rows) by evaluated languages (columns) for one variant."""
        variant, rows = variant_rows(self.frame, variant)
        table = rows.pivot(index="ablated", columns="evaluated", values=value)
        order = list(dict.fromkeys(rows["ablated"]))
        return table.loc[order, list(dict.fromkeys(rows["evaluated"]))]


def deactivation_matrix(
    model: Any,
    neurons: LanguageNeurons,
    data: Corpus | Mapping[str, Sequence[Any]],
    *,
    classes: Iterable[str] = ("specific",),
    metric: Metric | None = None,
    languages: Sequence[str] | None = None,
    layers: Layers = None,
    value: float | Literal["zero", "mean"] = 0.0,
    stats: ActivationStats | None = None,
    controls: int | Mapping[str, int] = 3,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    batch_size: int = 8,
    progress: bool = True,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    checkpoint: str | Path | None = None,
) -> DeactivationResult:
    """Deactivate each language's neurons and evaluate every language (Zhang et al. (AAAI-26) Fig. 2).

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        neurons: identified neurons (ternary or LAPE).
        data: a [`Corpus`][tl_multilingual.inputs.corpus.Corpus] (metric: perplexity) or multiple-choice items per
            language (metric: accuracy; see [`tl_multilingual.choice_accuracy()`][tl_multilingual.causal.evaluate.choice_accuracy]).
        classes: variants to deactivate, e.g. ``["specific", "specific+related",
            "specific+related+general"]`` for Zhang et al. (AAAI-26), ``["language"]`` for LAPE.
        languages: languages whose neurons are deactivated (default: all of ``neurons``).
        layers: restrict every mask (and its controls) to these layers, e.g. a stage's
            ``stage_map.layers("understanding")`` (see [`tl_multilingual.map_stages()`][tl_multilingual.stages.mapping.map_stages]).
        value: what deactivated neurons are set to: 0, a constant, or ``"mean"`` (needs
            ``stats``).
        controls: random same-size-per-layer neuron sets per (variant, language), or a
            number per variant (``{"specific+related": 3}``, matched by the classes it
            names, in any order; unnamed variants get none).
        seed: seed of the controls and of the bootstrap.
        n_boot: paired bootstrap replicates over texts/items for the change's interval.
        ci: the interval's coverage.
        batch_size: texts per forward pass.
        progress: show a progress bar.
        allow_mismatch: accept neurons or statistics of another model of the same shape.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: ``"truncate"``, ``"split"`` (perplexity only) or ``"error"``; see
            [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].
        checkpoint: a folder where every finished run (the baseline, each
            deactivation, each control) is saved; a rerun with the same inputs reads
            them back instead of running them again, with the same result. Runs saved
            for other data, model, weights, masks or settings are discarded.

    Returns:
        [`DeactivationResult`][tl_multilingual.experiments.deactivation.DeactivationResult] (``to_frame()``, ``matrix(variant)``).

    Raises:
        IdentificationError, StatsError: neurons or statistics of another shape, or of
            another model (unless ``allow_mismatch``).
    """
    lm = adapt(model)
    check_fits(lm, neurons, what="the neurons", error=IdentificationError, allow_mismatch=allow_mismatch)
    if stats is not None:
        check_fits(lm, stats, what="the statistics", error=StatsError, allow_mismatch=allow_mismatch)
    if metric is None:
        metric = "perplexity" if isinstance(data, Corpus) else "accuracy"
    if metric == "perplexity" and not isinstance(data, Corpus):
        raise TLMultilingualError("perplexity needs a Corpus")
    evaluation = _Evaluation(data, metric, batch_size, {"max_length": max_length, "overflow": overflow})
    ablated = list(neurons.languages if languages is None else languages)
    variants = list(classes)
    masks = {(v, lang): variant_mask(neurons, v, lang) for v in variants for lang in ablated}
    if layers is not None:
        masks = {key: m.restrict(lm.layer_range(layers)) for key, m in masks.items()}
    if isinstance(controls, Mapping):
        per_variant = {frozenset(parse_variant(v, MASK_NAMES)): n for v, n in controls.items()}
        n_controls = {v: per_variant.get(frozenset(parse_variant(v, MASK_NAMES)), 0) for v in variants}
    else:
        n_controls = {v: controls for v in variants}

    store = None
    if checkpoint is not None:
        data_key = data.fingerprint() if isinstance(data, Corpus) else {k: list(v) for k, v in data.items()}
        inputs = inputs_key(data=data_key, model=lm.describe(), metric=metric, value=value,
                            stats=None if stats is None else [stats.provenance, stats.token_counts],
                            batch_size=batch_size, max_length=max_length, overflow=overflow)
        store = RunStore(Path(checkpoint), inputs, lambda units, folder: save_frame(units, folder / "units.json"),
                         lambda folder: load_frame(folder / "units.json"))
    runs = controlled_runs(
        {key: (lambda block, mask=mask: mask) for key, mask in masks.items()},
        lambda block: evaluation.units(lm),
        lambda key, mask: ablate(lm, mask, value=value, stats=stats, allow_mismatch=allow_mismatch),
        controls={key: n_controls[key[0]] for key in masks},
        seed=seed,
        desc="deactivation matrix",
        progress=progress,
        store=store,
    )
    (baseline,) = runs.baseline
    evaluated = list(dict.fromkeys(baseline["language"]))
    rng = np.random.default_rng(seed)
    unit_draws = {
        lang: resample.draws(n, n_boot, rng) for lang, n in baseline.groupby("language", sort=False).size().items()
    }
    rows, control_rows = [], []
    for (variant, lang), run in runs.conditions.items():
        (hit,), ctrl_runs = run.hit, [c[0] for c in run.controls]
        for target in evaluated:
            rows.append(
                _row(evaluation.aggregate, baseline, hit, ctrl_runs, target, unit_draws[target], ci)
                | {"variant": variant, "ablated": lang, "evaluated": target, "n_neurons": run.sizes[0]}
            )
            for c, ctrl in enumerate(ctrl_runs):
                control_rows.append(
                    {"variant": variant, "ablated": lang, "evaluated": target, "seed": c,
                     "value": _value(evaluation.aggregate, ctrl, target)}
                )
    columns = ["variant", "ablated", "evaluated", "n_neurons", "baseline", "value", "change",
               "relative_change", "ci_low", "ci_high", "control_value", "control_change",
               "control_change_sd", "effect_over_control"]
    return DeactivationResult(pd.DataFrame(rows)[columns], pd.DataFrame(control_rows), metric)


def _select(units: pd.DataFrame, language: str) -> tuple[np.ndarray, np.ndarray]:
    part = units[units["language"] == language].sort_values("unit")
    return part["num"].to_numpy(float), part["den"].to_numpy(float)


def _value(aggregate: Aggregate, units: pd.DataFrame, language: str) -> float:
    num, den = _select(units, language)
    return float(aggregate(num.sum(), den.sum()))


def _row(
    aggregate: Aggregate,
    baseline: pd.DataFrame,
    hit: pd.DataFrame,
    ctrl_runs: list[pd.DataFrame],
    language: str,
    unit_draws: np.ndarray,
    ci: float,
) -> dict[str, Any]:
    def statistic(values: np.ndarray, index: np.ndarray) -> np.ndarray:  # [2, n]: numerators, denominators
        return aggregate(values[0][index].sum(-1), values[1][index].sum(-1))

    base_units, hit_units = np.stack(_select(baseline, language)), np.stack(_select(hit, language))
    every = np.arange(base_units.shape[1])
    base, value = float(statistic(base_units, every)), float(statistic(hit_units, every))
    change, low, high = paired_interval(hit_units, base_units, unit_draws, ci, statistic)
    ctrl_changes = np.array([_value(aggregate, c, language) - base for c in ctrl_runs])
    ctrl_change = float(ctrl_changes.mean()) if len(ctrl_changes) else float("nan")
    return {
        "baseline": base,
        "value": value,
        "change": change,
        "relative_change": change / base if base else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "control_value": base + ctrl_change,
        "control_change": ctrl_change,
        "control_change_sd": float(ctrl_changes.std(ddof=1)) if len(ctrl_changes) > 1 else float("nan"),
        "effect_over_control": change - ctrl_change,
    }
