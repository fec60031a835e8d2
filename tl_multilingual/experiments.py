"""Deactivation experiments of paper A (Fig. 2) and LAPE, one call each.

:func:`ablation_matrix` deactivates, for every language, a class of its neurons and
measures every evaluated language, against the unmodified model and against random
neuron sets of the same size per layer (the control). Effects come with paired
bootstrap intervals over texts (or items).

Variants name neuron classes joined with ``+``: paper A's ``"specific"``,
``"specific+related"`` and ``"specific+related+general"``; LAPE's ``"language"``
(all of a language's selected neurons); any of ``specific``, ``related``,
``general``, ``language``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .adapters import ModelAdapter, adapt
from .corpus import Corpus
from .errors import IdentificationError, SaveError, StatsError, TLMultilingualError
from .evaluate import choice_scores, text_nll
from .interventions import Layers, ablate
from .masks import NeuronMask
from .neurons import LanguageNeurons
from .persist import atomic_folder, recover
from .provenance import check_fits
from .stats import ActivationStats
from .tokens import Overflow

__all__ = ["ablation_matrix", "AblationResult", "variant_mask"]

_FILES = ("cells.csv", "controls.csv", "result.json")

Metric = Literal["perplexity", "accuracy"]


def variant_mask(neurons: LanguageNeurons, variant: str, language: str) -> NeuronMask:
    """The union of the classes named in ``variant`` (``"specific+related"``) for ``language``."""
    parts = [p.strip() for p in variant.split("+") if p.strip()]
    if not parts:
        raise TLMultilingualError(f"empty variant {variant!r}")
    mask = NeuronMask.empty(neurons.n_layers, neurons.d_mlp)
    for part in parts:
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
class AblationResult:
    """Outcome of :func:`ablation_matrix`.

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
                json.dumps({"kind": "tl_multilingual.AblationResult", "metric": self.metric}), encoding="utf-8"
            )
        return folder

    @classmethod
    def load(cls, path: str | Path) -> AblationResult:
        """Load a result saved with :meth:`save`.

        Raises:
            SaveError: the folder is missing, damaged, or not an ablation result.
        """
        folder = Path(path)
        recover(folder)
        try:
            meta = json.loads((folder / "result.json").read_text(encoding="utf-8"))
            frame, controls = pd.read_csv(folder / "cells.csv"), pd.read_csv(folder / "controls.csv")
        except (OSError, ValueError) as err:  # ValueError: JSON, UTF-8 and CSV parsing
            raise SaveError(f"{folder} is not a saved ablation result: {err}") from err
        if not isinstance(meta, dict) or meta.get("kind") != "tl_multilingual.AblationResult":
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
        variants = list(dict.fromkeys(self.frame["variant"]))
        variant = variant or variants[0]
        if variant not in variants:
            raise TLMultilingualError(f"no variant {variant!r}; have {variants}")
        rows = self.frame[self.frame["variant"] == variant]
        table = rows.pivot(index="ablated", columns="evaluated", values=value)
        order = list(dict.fromkeys(rows["ablated"]))
        return table.loc[order, list(dict.fromkeys(rows["evaluated"]))]


def _interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def ablation_matrix(
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
) -> AblationResult:
    """Deactivate each language's neurons and evaluate every language (paper A Fig. 2).

    Args:
        model: a model or :class:`ModelAdapter`.
        neurons: identified neurons (ternary or LAPE).
        data: a :class:`Corpus` (metric: perplexity) or multiple-choice items per
            language (metric: accuracy; see :func:`tl_multilingual.choice_accuracy`).
        classes: variants to deactivate, e.g. ``["specific", "specific+related",
            "specific+related+general"]`` for paper A, ``["language"]`` for LAPE.
        languages: languages whose neurons are deactivated (default: all of ``neurons``).
        layers: restrict every mask (and its controls) to these layers, e.g. a stage's
            ``stage_map.layers("understanding")`` (see :func:`tl_multilingual.map_stages`).
        value: what deactivated neurons are set to: 0, a constant, or ``"mean"`` (needs
            ``stats``).
        controls: random same-size-per-layer neuron sets per (variant, language), or a
            number per variant (``{"specific+related": 3}``; unnamed variants get none).
        seed: seed of the controls and of the bootstrap.
        n_boot: paired bootstrap replicates over texts/items for the change's interval.
        ci: the interval's coverage.
        batch_size: texts per forward pass.
        progress: show a progress bar.
        allow_mismatch: accept neurons or statistics of another model of the same shape.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: ``"truncate"``, ``"split"`` (perplexity only) or ``"error"``; see
            :mod:`tl_multilingual.tokens`.

    Returns:
        :class:`AblationResult` (``to_frame()``, ``matrix(variant)``).

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
    n_controls = {v: (controls.get(v, 0) if isinstance(controls, Mapping) else controls) for v in variants}
    total = 1 + sum(1 + n_controls[v] for v, _ in masks)
    bar = tqdm(total=total, disable=not progress, desc="ablation matrix", unit="run")

    def run(mask: NeuronMask | None) -> pd.DataFrame:
        if mask is None:
            units = evaluation.units(lm)
        elif mask.count() == 0:
            units = baseline  # nothing to deactivate
        else:
            with ablate(lm, mask, value=value, stats=stats, allow_mismatch=allow_mismatch):
                units = evaluation.units(lm)
        bar.update()
        return units

    try:
        baseline = run(None)
        evaluated = list(dict.fromkeys(baseline["language"]))
        rng = np.random.default_rng(seed)
        draws = {
            lang: rng.integers(0, n, size=(n_boot, n))
            for lang, n in baseline.groupby("language", sort=False).size().items()
        }
        rows, control_rows = [], []
        for (variant, lang), mask in masks.items():
            hit = run(mask)
            ctrl_runs = [run(random_mask) for random_mask in mask.controls(n_controls[variant], seed=seed)]
            for target in evaluated:
                rows.append(
                    _row(evaluation, baseline, hit, ctrl_runs, target, draws[target], ci)
                    | {"variant": variant, "ablated": lang, "evaluated": target, "n_neurons": mask.count()}
                )
                for c, ctrl in enumerate(ctrl_runs):
                    control_rows.append(
                        {"variant": variant, "ablated": lang, "evaluated": target, "seed": c,
                         "value": _value(evaluation, ctrl, target)}
                    )
    finally:
        bar.close()
    columns = ["variant", "ablated", "evaluated", "n_neurons", "baseline", "value", "change",
               "relative_change", "ci_low", "ci_high", "control_value", "control_change",
               "control_change_sd", "effect_over_control"]
    return AblationResult(pd.DataFrame(rows)[columns], pd.DataFrame(control_rows), metric)


def _select(units: pd.DataFrame, language: str) -> tuple[np.ndarray, np.ndarray]:
    part = units[units["language"] == language].sort_values("unit")
    return part["num"].to_numpy(float), part["den"].to_numpy(float)


def _value(evaluation: _Evaluation, units: pd.DataFrame, language: str) -> float:
    num, den = _select(units, language)
    return float(evaluation.aggregate(num.sum(), den.sum()))


def _row(
    evaluation: _Evaluation,
    baseline: pd.DataFrame,
    hit: pd.DataFrame,
    ctrl_runs: list[pd.DataFrame],
    language: str,
    draws: np.ndarray,
    ci: float,
) -> dict[str, Any]:
    b_num, b_den = _select(baseline, language)
    h_num, h_den = _select(hit, language)
    base = float(evaluation.aggregate(b_num.sum(), b_den.sum()))
    value = float(evaluation.aggregate(h_num.sum(), h_den.sum()))
    boot_base = evaluation.aggregate(b_num[draws].sum(1), b_den[draws].sum(1))
    boot_hit = evaluation.aggregate(h_num[draws].sum(1), h_den[draws].sum(1))
    low, high = _interval(boot_hit - boot_base, ci)
    ctrl_changes = np.array([_value(evaluation, c, language) - base for c in ctrl_runs])
    ctrl_change = float(ctrl_changes.mean()) if len(ctrl_changes) else float("nan")
    return {
        "baseline": base,
        "value": value,
        "change": value - base,
        "relative_change": (value - base) / base if base else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "control_value": base + ctrl_change,
        "control_change": ctrl_change,
        "control_change_sd": float(ctrl_changes.std(ddof=1)) if len(ctrl_changes) > 1 else float("nan"),
        "effect_over_control": value - base - ctrl_change,
    }
