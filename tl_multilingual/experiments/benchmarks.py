"""Standard benchmarks under deactivation:
[`benchmark_effects()`][tl_multilingual.experiments.benchmarks.benchmark_effects].

Studies of language neurons report how a multilingual benchmark moves when a
language's neurons are switched off (Tang et al., 2024; Zhang et al., AAAI-26), on the
tasks of lm-evaluation-harness (Gao et al., 2024) that have one task per language:
XNLI (``xnli_fr``), Belebele (``belebele_fra_Latn``), Global-MMLU (``global_mmlu_fr``),
XCOPA, MGSM, INCLUDE. Here a task per language is run through
[`TLMEvalLM`][tl_multilingual.causal.harness.TLMEvalLM] on the unmodified model, with
each language's neurons deactivated, and with random neuron sets of the same size
per layer (the controls), by the experiment engine
([`controlled_runs()`][tl_multilingual.experiments.engine.controlled_runs]): the cells
are those of
[`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix],
with the task's metric in place of perplexity.

The unit of the paired bootstrap is the task's item (document): the harness logs each
item's metric (``log_samples``), and a language's score is their mean, which is the
harness's own aggregate for the mean-aggregated metrics of these tasks (``acc``,
``acc_norm``, ``exact_match``; checked on every run). A task that is a group of
subtasks is scored over the items of all its subtasks together (the micro average,
the harness's ``weight_by_size``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .. import resample
from ..causal.harness import TLMEvalLM
from ..causal.interventions import Layers, ablate
from ..errors import IdentificationError, SaveError, StatsError, TLMultilingualError
from ..hub import HubMixin
from ..inputs.languages import normalize_language
from ..model.adapters import ModelAdapter, adapt
from ..model.tokens import Overflow
from ..neurons.classes import LanguageNeurons
from ..neurons.stats import ActivationStats
from ..persist import _version, library_versions, read_tables, write_tables
from ..provenance import check_fits, model_record
from .deactivation import _row, _value, variant_mask
from .engine import controlled_runs, variant_rows

__all__ = ["benchmark_effects", "BenchmarkEffects", "item_scores"]

_KIND = "tl_multilingual.BenchmarkEffects"
_COLUMNS = ["variant", "ablated", "evaluated", "task", "n_items", "n_neurons", "baseline", "value",
            "change", "relative_change", "ci_low", "ci_high", "control_value", "control_change",
            "control_change_sd", "effect_over_control"]
# simple_evaluate arguments the experiment sets itself (use_cache: the harness's response
# cache keys a request by its text, so it would return unedited answers under an edit).
_OWN = ("model", "tasks", "task_manager", "bootstrap_iters", "log_samples", "limit", "num_fewshot",
        "use_cache")


def _mean(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.maximum(den, 1e-12)


@dataclass
class BenchmarkEffects(HubMixin):
    """Outcome of [`benchmark_effects()`][tl_multilingual.experiments.benchmarks.benchmark_effects].

    Attributes:
        frame: one row per (variant, ablated language, evaluated language): ``task``,
            ``n_items``, ``n_neurons`` deactivated, ``baseline`` and ``value`` (the
            metric, a mean over items in [0, 1] for accuracy), ``change`` and
            ``relative_change`` with a paired bootstrap interval over items
            (``ci_low``, ``ci_high``), ``control_value``, ``control_change`` (mean over
            the random controls) and its spread ``control_change_sd``, and
            ``effect_over_control`` = change - control change.
        controls: one row per (variant, ablated, evaluated, control ``seed``): the
            metric under that random neuron set.
        metric: the harness metric and filter, ``"acc,none"``.
        record: provenance and settings: ``model`` (the adapter's description),
            ``tasks`` (language -> task), ``languages``, ``recipe`` (every argument of
            the run) and ``versions`` (library, TransformerLens, torch, lm-eval).
    """

    frame: pd.DataFrame
    controls: pd.DataFrame
    metric: str
    record: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the result comes from (see `tl_multilingual.provenance`)."""
        return model_record(self.record.get("model"))

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def matrix(self, variant: str | None = None, value: str = "change") -> pd.DataFrame:
        """Ablated languages (rows) by evaluated languages (columns) of one column of
        ``frame``, for one variant (default: the first); drawn by
        [`tlm.plot.deactivation_heatmap()`][tl_multilingual.study.plot.deactivation_heatmap].

        Raises:
            TLMultilingualError: no such variant or column.
        """
        variant, rows = variant_rows(self.frame, variant)
        if value not in self.frame.columns:
            raise TLMultilingualError(f"no column {value!r}; have {list(self.frame.columns)}")
        table = rows.pivot(index="ablated", columns="evaluated", values=value)
        ablated, evaluated = dict.fromkeys(rows["ablated"]), dict.fromkeys(rows["evaluated"])
        return table.loc[list(ablated), list(evaluated)]

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path``: ``cells.csv``, ``controls.csv`` and
        ``result.json`` (kind, metric, provenance, settings), replaced together.

        Raises:
            SaveError: ``path`` holds something else, or writing failed.
        """
        record = {"kind": _KIND, "metric": self.metric, **self.record}
        return write_tables(path, {"cells": self.frame, "controls": self.controls}, record)

    @classmethod
    def load(cls, path: str | Path) -> BenchmarkEffects:
        """Load a result saved with
        [`save()`][tl_multilingual.experiments.benchmarks.BenchmarkEffects.save].

        Raises:
            SaveError: the folder is missing, damaged, or holds another kind of result.
        """
        record, frames = read_tables(path, ("cells", "controls"), _KIND, "benchmark result")
        metric = record.pop("metric", None)
        record.pop("kind")
        if not isinstance(metric, str):
            raise SaveError(f"{path}: the record names no metric")
        missing = [c for c in _COLUMNS if c not in frames["cells"].columns]
        if missing:
            raise SaveError(f"{Path(path) / 'cells.csv'} lacks the columns {missing}")
        return cls(frames["cells"], frames["controls"], metric, record)


def _metric(metric: str) -> tuple[str, str]:
    name, _, filter_key = metric.partition(",")
    if not name:
        raise TLMultilingualError(f"metric is a harness metric such as 'acc' or 'exact_match,"
                                  f"strict-match', got {metric!r}")
    return name, filter_key or "none"


def _leaves(name: str, groups: Mapping[str, list[str]]) -> list[str]:
    if name not in groups:
        return [name]
    return [leaf for sub in groups[name] for leaf in _leaves(sub, groups)]


def item_scores(results: Mapping[str, Any], tasks: Mapping[str, str], metric: str = "acc"
                ) -> pd.DataFrame:
    """Per-item scores of a ``lm_eval.simple_evaluate(..., log_samples=True)`` result.

    Args:
        results: what ``simple_evaluate`` returned.
        tasks: language -> the task (or group of tasks) run for it.
        metric: the metric, with its filter after a comma (``"exact_match,strict-match"``;
            no filter: ``none``).

    Returns:
        One row per (language, subtask, item), items in document order: ``language``,
        ``task`` (the subtask), ``doc_id``, ``score``.

    Raises:
        TLMultilingualError: a task was not run, the samples were not logged, a subtask
            has no item scored with ``metric`` (the message lists those it has), the
            metric is not a number per item (a corpus-level metric such as BLEU), or the
            harness's aggregate is not the mean of the items' scores.
    """
    name, filter_key = _metric(metric)
    samples = results.get("samples")
    if not samples:
        raise TLMultilingualError("the harness logged no samples: run it with log_samples=True")
    groups = results.get("group_subtasks") or {}
    rows = []
    for lang, task in tasks.items():
        for leaf in _leaves(task, groups):
            logged = samples.get(leaf)
            if logged is None:
                raise TLMultilingualError(
                    f"the harness ran no task {leaf!r}; ran {sorted(samples)}")
            mine = sorted((s for s in logged if s.get("filter") == filter_key and name in s),
                          key=lambda s: s["doc_id"])
            if not mine:
                have = sorted({f"{m},{s.get('filter')}"
                               for s in logged for m in s.get("metrics", [])})
                raise TLMultilingualError(f"task {leaf!r} has no item scored with {name!r} under "
                                          f"the filter {filter_key!r}; it has {have}")
            scores = []
            for s in mine:
                value = s[name]
                if isinstance(value, (list, tuple, dict, str)) or value is None:
                    raise TLMultilingualError(
                        f"{name!r} of task {leaf!r} is not a number per item ({value!r:.60}): "
                        "a corpus-level metric has no per-item change; choose a per-item metric")
                scores.append(float(value))
            reported = results.get("results", {}).get(leaf, {}).get(f"{name},{filter_key}")
            if isinstance(reported, (int, float)) and not np.isclose(np.mean(scores), reported,
                                                                     rtol=0, atol=1e-9):
                raise TLMultilingualError(
                    f"the harness's {name!r} of {leaf!r} ({reported}) is not the mean of its "
                    f"items' scores ({np.mean(scores)}): choose a metric aggregated by the mean")
            rows += [{"language": lang, "task": leaf, "doc_id": int(s["doc_id"]), "score": v}
                     for s, v in zip(mine, scores)]
    return pd.DataFrame(rows, columns=["language", "task", "doc_id", "score"])


class _Harness:
    """Runs the tasks through the harness and gives the engine its per-item units."""

    def __init__(self, lm: ModelAdapter, tasks: dict[str, str], metric: str, *, task_manager: Any,
                 limit: int | float | None, num_fewshot: int | None, options: dict[str, Any],
                 harness: TLMEvalLM) -> None:
        self.lm, self.tasks, self.metric, self.harness = lm, tasks, metric, harness
        self.arguments = {"task_manager": task_manager, "limit": limit, "num_fewshot": num_fewshot,
                          "verbosity": "ERROR", **options}

    def units(self) -> pd.DataFrame:
        import lm_eval

        results = lm_eval.simple_evaluate(model=self.harness, tasks=list(dict.fromkeys(
            self.tasks.values())), bootstrap_iters=0, log_samples=True, **self.arguments)
        scores = item_scores(results, self.tasks, self.metric)
        units = scores.groupby("language", sort=False).cumcount()  # document order, per language
        return pd.DataFrame({"language": scores["language"], "unit": units, "num": scores["score"],
                             "den": 1.0, "task": scores["task"]})


def benchmark_effects(
    model: Any,
    neurons: LanguageNeurons,
    tasks: Mapping[str, str],
    *,
    metric: str = "acc",
    classes: Iterable[str] = ("specific",),
    languages: Iterable[str] | None = None,
    layers: Layers = None,
    value: float | Literal["zero", "mean"] = 0.0,
    stats: ActivationStats | None = None,
    task_manager: Any = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    harness_options: Mapping[str, Any] | None = None,
    controls: int = 3,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    batch_size: int = 8,
    progress: bool = True,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> BenchmarkEffects:
    """Deactivate each language's neurons and run an lm-evaluation-harness task per
    language, against the unmodified model and random neurons (Zhang et al., AAAI-26,
    Fig. 2, on a benchmark).

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        neurons: identified neurons (ternary or LAPE).
        tasks: language -> harness task (or group) in that language, e.g.
            ``{"fr": "xnli_fr", "de": "xnli_de"}``; every task is evaluated under every
            condition.
        metric: the per-item harness metric, with its filter after a comma when the
            task has several (``"acc"``, ``"acc_norm"``, ``"exact_match,strict-match"``).
        classes: variants to deactivate, as in
            [`deactivation_matrix()`][tl_multilingual.experiments.deactivation.deactivation_matrix].
        languages: languages whose neurons are deactivated (default: those of
            ``tasks`` that ``neurons`` has).
        layers: restrict every mask (and its controls) to these layers.
        value: what deactivated neurons are set to: 0, a constant, or ``"mean"`` (needs
            ``stats``).
        stats: statistics for ``value="mean"``.
        task_manager: an ``lm_eval.tasks.TaskManager`` (e.g. one that includes local
            task definitions); default: the harness's.
        limit: the harness's ``limit`` (items per task, or a fraction).
        num_fewshot: the harness's ``num_fewshot``.
        harness_options: further ``lm_eval.simple_evaluate`` arguments
            (``apply_chat_template``, ``gen_kwargs``...), the same for every run.
        controls: random same-size-per-layer neuron sets per (variant, language).
        seed: seed of the controls and of the bootstrap.
        n_boot: paired bootstrap replicates over items.
        ci: the interval's coverage.
        batch_size: requests per forward pass.
        progress: show a progress bar.
        allow_mismatch: accept neurons or statistics of another model of the same shape.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: what a too long context does, ``"truncate"`` or ``"error"`` (see
            [`TLMEvalLM`][tl_multilingual.causal.harness.TLMEvalLM]).

    Returns:
        [`BenchmarkEffects`][tl_multilingual.experiments.benchmarks.BenchmarkEffects]
        (``to_frame()``, ``matrix(variant)``, ``save()``).

    Raises:
        TLMultilingualError: lm-evaluation-harness is not installed, ``tasks`` is empty,
            no language to deactivate, ``harness_options`` sets what the experiment
            sets, or the metric is not a per-item mean (see
            [`item_scores()`][tl_multilingual.experiments.benchmarks.item_scores]).
        LanguageError: a language code the library cannot read.
        IdentificationError, StatsError: neurons or statistics of another shape, or of
            another model (unless ``allow_mismatch``).
        MaskError: a mask holds more than half of a layer (pass ``controls=0``).
    """
    lm = adapt(model)
    check_fits(lm, neurons, what="the neurons", error=IdentificationError,
               allow_mismatch=allow_mismatch)
    if stats is not None:
        check_fits(lm, stats, what="the statistics", error=StatsError,
                   allow_mismatch=allow_mismatch)
    task_of = {normalize_language(lang): str(task) for lang, task in tasks.items()}
    if not task_of:
        raise TLMultilingualError("tasks is empty: give a harness task per language")
    options = dict(harness_options or {})
    clash = sorted(set(options) & set(_OWN))
    if clash:
        raise TLMultilingualError(f"harness_options may not set {clash}: the experiment sets them"
                                  " (use the arguments of the same name; use_cache is never used)")
    _metric(metric)
    known = set(neurons.languages)
    if languages is None:
        ablated = [lang for lang in task_of if lang in known]
    else:
        ablated = [normalize_language(lang) for lang in languages]
    unknown = [lang for lang in ablated if lang not in known]
    if unknown or not ablated:
        raise TLMultilingualError(f"no neurons of {unknown or list(task_of)} to deactivate; the "
                                  f"neurons have {sorted(known)}")
    harness = _Harness(lm, task_of, metric, task_manager=task_manager, limit=limit,
                       num_fewshot=num_fewshot, options=options,
                       harness=TLMEvalLM(lm, batch_size=batch_size, max_length=max_length,
                                         overflow=overflow))
    variants = list(classes)
    masks = {(v, lang): variant_mask(neurons, v, lang) for v in variants for lang in ablated}
    if layers is not None:
        masks = {key: m.restrict(lm.layer_range(layers)) for key, m in masks.items()}
    runs = controlled_runs(
        {key: (lambda block, mask=mask: mask) for key, mask in masks.items()},
        lambda block: harness.units(),
        lambda key, mask: ablate(lm, mask, value=value, stats=stats, allow_mismatch=allow_mismatch),
        controls=controls,
        seed=seed,
        desc="benchmark effects",
        progress=progress,
    )
    (baseline,) = runs.baseline
    rng = np.random.default_rng(seed)
    sizes = baseline.groupby("language", sort=False).size()
    unit_draws = {lang: resample.draws(n, n_boot, rng) for lang, n in sizes.items()}
    tasks_run = baseline.groupby("language", sort=False)["task"].agg(
        lambda t: ",".join(dict.fromkeys(t)))
    rows, control_rows = [], []
    for (variant, lang), run in runs.conditions.items():
        (hit,), ctrl_runs = run.hit, [c[0] for c in run.controls]
        for target in task_of:
            rows.append(
                {"variant": variant, "ablated": lang, "evaluated": target,
                 "task": tasks_run[target], "n_items": int(sizes[target]),
                 "n_neurons": run.sizes[0]}
                | _row(_mean, baseline, hit, ctrl_runs, target, unit_draws[target], ci)
            )
            control_rows += [{"variant": variant, "ablated": lang, "evaluated": target, "seed": c,
                              "value": _value(_mean, ctrl, target)}
                             for c, ctrl in enumerate(ctrl_runs)]
    record = {
        "model": lm.describe(),
        "tasks": task_of,
        "languages": list(task_of),
        "recipe": {"classes": variants, "ablated": ablated, "layers": layers,
                   "value": value, "controls": controls, "seed": seed, "n_boot": n_boot, "ci": ci,
                   "limit": limit, "num_fewshot": num_fewshot, "max_length": max_length,
                   "overflow": overflow,
                   "harness_options": options},
        "versions": library_versions() | {"lm_eval": _version("lm_eval")},
    }
    record = json.loads(json.dumps(record, default=str))  # as a reader of the saved file sees it
    controls_frame = pd.DataFrame(control_rows,
                                  columns=["variant", "ablated", "evaluated", "seed", "value"])
    return BenchmarkEffects(pd.DataFrame(rows)[_COLUMNS], controls_frame, ",".join(_metric(metric)),
                            record)

