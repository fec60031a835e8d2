"""How language neurons change between two checkpoints of one model (Zhang et al. (AAAI-26), Sec. 5).

[`compare()`][tl_multilingual.experiments.comparison.compare] takes the statistics (or the identified neurons) of a base and an
aligned model and reports what moved: class counts per layer (Zhang et al. (AAAI-26) Fig. 4),
neurons shared by ``N`` languages (Fig. 5), specific and related neurons of the
trained versus the other languages (Table 2), the overlap of the identified neurons
(Table 4) and the transitions of every neuron between classes. Each neuron has one
class per model: ``general`` (above the bar in every language), else ``specific`` or
``related`` (selected and above the bar in one, or several, languages), else
``other``.

With statistics, the aligned model is identified with the base model's lambda by
default (the paper's counts depend on it; ``lam="each"`` sweeps each model), and
[`Comparison.headlines()`][tl_multilingual.experiments.comparison.Comparison.headlines] puts a bootstrap interval on every headline change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..errors import TLMultilingualError
from ..inputs.languages import normalize_language
from ..neurons.classes import CLASS_CODES, DROPPED, OTHER, LanguageNeurons
from ..neurons.identification import METHODS, Method, identify, identify_replicate
from ..neurons.stats import ActivationStats
from ..resample import percentile_interval

__all__ = ["compare", "compare_series", "Comparison", "Series", "CLASS_ORDER", "neuron_class"]

CLASS_ORDER = CLASS_CODES[: OTHER + 1]
"""The classes of a comparison: `CLASS_CODES` with the
dropped neurons (selected, in no language) counted as ``other``."""


def neuron_class(neurons: LanguageNeurons) -> Tensor:
    """Class index of every neuron, in ``CLASS_ORDER``: [`LanguageNeurons.classes()`][tl_multilingual.neurons.classes.LanguageNeurons.classes]
    with dropped neurons as ``other``; long ``[n_layers, d_mlp]``.

    Raises:
        IdentificationError: for neurons whose general neurons are unknown.
    """
    neurons.general()  # a comparison needs every class: refuse masks without general neurons
    codes = neurons.classes().long()
    return codes.masked_fill(codes == DROPPED, OTHER)


def _check_neurons(a: LanguageNeurons, b: LanguageNeurons) -> None:
    if a.languages != b.languages:
        raise TLMultilingualError(f"the neurons cover different languages: {a.languages} vs {b.languages}")
    if a.membership.shape != b.membership.shape:
        raise TLMultilingualError(
            f"the models differ in shape: {a.n_layers}x{a.d_mlp} vs {b.n_layers}x{b.d_mlp} (d_mlp or layers)"
        )
    if a.method != b.method:
        raise TLMultilingualError(f"the neurons were identified by different methods: {a.method} vs {b.method}")
    for key in ("top_rate", "bar_ratio", "filter_rate"):
        if a.params.get(key) != b.params.get(key):
            raise TLMultilingualError(f"the neurons were identified with different {key}: "
                                      f"{a.params.get(key)} vs {b.params.get(key)}")


@dataclass
class Comparison:
    """Language neurons of a base and an aligned model, side by side.

    Attributes:
        before, after: the identified neurons.
        trained_languages: the languages the alignment trained on.
        labels: names of the two models in the tables.
    """

    before: LanguageNeurons
    after: LanguageNeurons
    trained_languages: tuple[str, ...] = ()
    labels: tuple[str, str] = ("before", "after")
    stats: tuple[ActivationStats, ActivationStats] | None = None

    @property
    def identify_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The two models' identification recipes ([`LanguageNeurons.recipe`][tl_multilingual.neurons.classes.LanguageNeurons.recipe]), when
        the comparison was built from statistics."""
        if self.stats is None:
            return None
        return self.before.recipe, self.after.recipe

    @property
    def languages(self) -> tuple[str, ...]:
        return self.before.languages

    def class_changes(self, stages: Any = None) -> pd.DataFrame:
        """Per layer and class: neurons ``before``, ``after`` and the ``change`` (Zhang et al. (AAAI-26)
        Fig. 4); with a `StageMap`, also each layer's ``stage``."""
        before, after = neuron_class(self.before), neuron_class(self.after)
        rows = []
        for layer in range(self.before.n_layers):
            for k, cls in enumerate(CLASS_ORDER[:3]):
                b, a = int((before[layer] == k).sum()), int((after[layer] == k).sum())
                rows.append({"layer": layer, "class": cls, "before": b, "after": a, "change": a - b})
        frame = pd.DataFrame(rows)
        if stages is not None:
            frame["stage"] = frame["layer"].map(stages.stage_of)
        return frame

    def shared_by_n(self) -> pd.DataFrame:
        """Neurons shared by ``n`` languages (1 = specific, K = general), before and after
        (Zhang et al. (AAAI-26) Fig. 5)."""
        k_langs = len(self.languages)
        rows = []
        for n in range(1, k_langs + 1):
            if n < k_langs:
                b = int((self.before.n_active_languages == n).sum())
                a = int((self.after.n_active_languages == n).sum())
            else:
                b, a = self.before.general().count(), self.after.general().count()
            rows.append({"n_languages": n, "before": b, "after": a, "change": a - b})
        return pd.DataFrame(rows)

    def per_language(self) -> pd.DataFrame:
        """Specific and related neurons of each language before and after, marking the
        trained languages (Zhang et al. (AAAI-26) Table 2)."""
        b, a = self.before.summary().set_index("language"), self.after.summary().set_index("language")
        rows = []
        for lang in self.languages:
            for cls in ("specific", "related"):
                rows.append({"language": lang, "trained": lang in self.trained_languages, "class": cls,
                             "before": int(b.loc[lang, cls]), "after": int(a.loc[lang, cls]),
                             "change": int(a.loc[lang, cls] - b.loc[lang, cls])})
        return pd.DataFrame(rows)

    def per_group(self) -> pd.DataFrame:
        """[`per_language()`][tl_multilingual.experiments.comparison.Comparison.per_language] averaged over the trained and the other languages."""
        frame = self.per_language()
        frame["group"] = np.where(frame["trained"], "trained", "other")
        return frame.groupby(["group", "class"], as_index=False)[["before", "after", "change"]].mean()

    def _masks(self, neurons: LanguageNeurons) -> dict[tuple[str, str | None], Tensor]:
        masks: dict[tuple[str, str | None], Tensor] = {("general", None): neurons.general().tensor}
        for lang in self.languages:
            masks[("specific", lang)] = neurons.specific(lang).tensor
            masks[("related", lang)] = neurons.related(lang).tensor
        masks[("specific", None)] = neurons.specific().tensor
        masks[("related", None)] = neurons.related().tensor
        return masks

    def overlap(self) -> pd.DataFrame:
        """How many identified neurons are the same before and after, per class and
        language (``None``: all languages; Zhang et al. (AAAI-26) Table 4): ``shared`` (in both),
        ``kept`` (shared / before) and ``jaccard`` (shared / in either)."""
        before, after = self._masks(self.before), self._masks(self.after)
        rows = []
        for (cls, lang), b in before.items():
            a = after[(cls, lang)]
            both, either = int((a & b).sum()), int((a | b).sum())
            rows.append({"class": cls, "language": lang, "before": int(b.sum()), "after": int(a.sum()),
                         "shared": both, "kept": both / int(b.sum()) if b.any() else float("nan"),
                         "jaccard": both / either if either else float("nan")})
        return pd.DataFrame(rows)

    def transitions(self) -> pd.DataFrame:
        """Neurons moving from each class (before) to each class (after), per layer;
        the counts of a layer add up to ``d_mlp``."""
        before, after = neuron_class(self.before), neuron_class(self.after)
        n = len(CLASS_ORDER)
        pairs = before * n + after  # [layer, neuron]
        counts = torch.stack([torch.bincount(row, minlength=n * n) for row in pairs])  # [layer, n*n]
        rows = [
            {"layer": layer, "from": CLASS_ORDER[i // n], "to": CLASS_ORDER[i % n], "count": int(counts[layer, i])}
            for layer in range(counts.shape[0])
            for i in range(n * n)
        ]
        return pd.DataFrame(rows)

    def transition_matrix(self, layer: int | None = None) -> pd.DataFrame:
        """Classes before (rows) by classes after (columns), for one layer or all."""
        frame = self.transitions()
        if layer is not None:
            frame = frame[frame["layer"] == layer]
        table = frame.pivot_table(index="from", columns="to", values="count", aggfunc="sum")
        return table.loc[list(CLASS_ORDER), list(CLASS_ORDER)]

    def _quantities(self, before: LanguageNeurons, after: LanguageNeurons) -> dict[str, tuple[float, float]]:
        trained = [lang for lang in self.languages if lang in self.trained_languages]
        other = [lang for lang in self.languages if lang not in self.trained_languages]
        out = {}
        for name, neurons in (("before", before), ("after", after)):
            summary = neurons.summary().set_index("language")
            values = {
                "specific": neurons.specific().count(),
                "related": neurons.related().count(),
                "general": neurons.general().count(),
            }
            for group, langs in (("trained", trained), ("other", other)):
                if langs:
                    values[f"specific ({group} languages)"] = float(summary.loc[langs, "specific"].mean())
                    values[f"related ({group} languages)"] = float(summary.loc[langs, "related"].mean())
            for key, value in values.items():
                out.setdefault(key, [0.0, 0.0])[0 if name == "before" else 1] = float(value)
        return {k: (v[0], v[1]) for k, v in out.items()}

    def headlines(self, *, n_boot: int = 200, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """Each headline change with a bootstrap interval and the share of replicates in
        which it has the opposite sign.

        Replicates redraw every activation count of both models as
        ``Binomial(tokens, p)`` (tokens independent: an approximation that ignores
        correlation within texts) and re-identify the neurons with the same parameters
        and lambdas ([`identify_replicate()`][tl_multilingual.neurons.identification.identify_replicate]). Needs the comparison to have
        been built from statistics.
        """
        if self.stats is None or self.identify_kwargs is None:
            raise TLMultilingualError("intervals need the statistics: build the comparison from ActivationStats")
        point = self._quantities(self.before, self.after)
        generator = torch.Generator().manual_seed(seed)
        draws: dict[str, list[float]] = {k: [] for k in point}
        for _ in range(n_boot):
            redrawn = [identify_replicate(stats, neurons, generator)
                       for stats, neurons in zip(self.stats, (self.before, self.after))]
            for key, (b, a) in self._quantities(*redrawn).items():
                draws[key].append(a - b)
        rows = []
        for key, (b, a) in point.items():
            values = np.array(draws[key])
            change = a - b
            opposite = float(np.mean(np.sign(values) != np.sign(change))) if change else float("nan")
            low, high = percentile_interval(values, ci)
            rows.append({"quantity": key, "before": b, "after": a, "change": change,
                         "ci_low": low, "ci_high": high, "opposite_sign_share": opposite})
        return pd.DataFrame(rows)


def _identify_pair(
    base: ActivationStats, aligned: ActivationStats, lam: float | Literal["base", "each"], kwargs: dict[str, Any]
) -> tuple[LanguageNeurons, LanguageNeurons]:
    before = identify(base, **kwargs, lam=lam if isinstance(lam, (int, float)) else "auto")
    after = identify(aligned, **kwargs, lam="auto" if lam == "each" else (before.lam if lam == "base" else lam))
    return before, after


def compare(
    base: ActivationStats | LanguageNeurons,
    aligned: ActivationStats | LanguageNeurons,
    *,
    trained_languages: Sequence[str] = (),
    lam: float | Literal["base", "each"] = "base",
    method: Method = "ternary",
    top_rate: float = 0.01,
    bar_ratio: float = 0.95,
    labels: tuple[str, str] = ("before", "after"),
) -> Comparison:
    """Compare the language neurons of two checkpoints of one architecture.

    Args:
        base: [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats] of the base model, or its [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons].
        aligned: the same for the aligned model (same languages, token policy, threshold
            and shape; neurons identified alike).
        trained_languages: the languages the alignment trained on.
        lam: for a method with a lambda (``METHODS[method].has_lambda``): ``"base"``
            identifies the aligned model with the base model's lambda (found by the
            sweep); ``"each"`` sweeps each model; a number fixes both.
        method: identification method (statistics only), a name of
            [`METHODS`][tl_multilingual.neurons.identification.METHODS].
        top_rate: identification parameter (statistics only).
        bar_ratio: identification parameter (statistics only).
        labels: the models' names in tables.
    """
    trained = tuple(normalize_language(x, allow_unknown=True) for x in trained_languages)
    if isinstance(base, ActivationStats) and isinstance(aligned, ActivationStats):
        base.check_compatible(aligned, same_model=False)
        kwargs = {"method": method, "top_rate": top_rate, "bar_ratio": bar_ratio}
        spec = METHODS.get(method)
        if spec is not None and spec.has_lambda:
            before, after = _identify_pair(base, aligned, lam, kwargs)
        else:
            before, after = identify(base, **kwargs), identify(aligned, **kwargs)
        comparison = Comparison(before, after, trained, labels, (base, aligned))
    elif isinstance(base, LanguageNeurons) and isinstance(aligned, LanguageNeurons):
        comparison = Comparison(base, aligned, trained, labels)
    else:
        raise TLMultilingualError("compare two ActivationStats or two LanguageNeurons, not a mix")
    _check_neurons(comparison.before, comparison.after)
    unknown = [x for x in trained if x not in comparison.languages]
    if unknown:
        raise TLMultilingualError(f"trained languages {unknown} are not among {comparison.languages}")
    return comparison


@dataclass
class Series:
    """Language neurons over a series of checkpoints (e.g. training steps)."""

    neurons: list[LanguageNeurons]
    labels: list[str]
    trained_languages: tuple[str, ...] = ()

    def class_counts(self) -> pd.DataFrame:
        """Per checkpoint, layer and class: the number of neurons."""
        rows = []
        for label, neurons in zip(self.labels, self.neurons):
            classes = neuron_class(neurons)
            for layer in range(neurons.n_layers):
                for k, cls in enumerate(CLASS_ORDER[:3]):
                    rows.append({"checkpoint": label, "layer": layer, "class": cls, "count": int((classes[layer] == k).sum())})
        return pd.DataFrame(rows)

    def totals(self) -> pd.DataFrame:
        """Per checkpoint and class: the number of neurons, and the change from the first."""
        frame = self.class_counts().groupby(["checkpoint", "class"], sort=False, as_index=False)["count"].sum()
        first = frame[frame["checkpoint"] == self.labels[0]].set_index("class")["count"]
        frame["change"] = frame["count"] - frame["class"].map(first)
        return frame

    def pairwise(self, i: int, j: int) -> Comparison:
        """The comparison of checkpoints ``i`` and ``j``."""
        return Comparison(self.neurons[i], self.neurons[j], self.trained_languages, (self.labels[i], self.labels[j]))


def compare_series(
    checkpoints: Sequence[ActivationStats | LanguageNeurons],
    *,
    labels: Sequence[str] | None = None,
    trained_languages: Sequence[str] = (),
    lam: float | Literal["first", "each"] = "first",
    top_rate: float = 0.01,
    bar_ratio: float = 0.95,
) -> Series:
    """Language neurons over checkpoints: the first checkpoint's lambda is reused for all
    by default (``"each"`` sweeps every one)."""
    if len(checkpoints) < 2:
        raise TLMultilingualError("a series needs at least two checkpoints")
    labels = list(labels) if labels is not None else [f"checkpoint {i}" for i in range(len(checkpoints))]
    if isinstance(checkpoints[0], ActivationStats):
        for other in checkpoints[1:]:
            checkpoints[0].check_compatible(other, same_model=False)
        kwargs = {"top_rate": top_rate, "bar_ratio": bar_ratio}
        first = identify(checkpoints[0], lam=lam if isinstance(lam, (int, float)) else "auto", **kwargs)
        rest_lam = "auto" if lam == "each" else (first.lam if lam == "first" else lam)
        neurons = [first] + [identify(s, lam=rest_lam, **kwargs) for s in checkpoints[1:]]
    else:
        neurons = list(checkpoints)
    for other in neurons[1:]:
        _check_neurons(neurons[0], other)
    trained = tuple(normalize_language(x, allow_unknown=True) for x in trained_languages)
    return Series(neurons, labels, trained)
