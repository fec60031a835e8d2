"""Figures for papers (matplotlib, optional: ``pip install "tl-multilingual[plot]"``).

Every function draws on a given ``ax`` (or a new figure sized for one paper column,
3.4 inches wide) and returns the figure. Colours come from the Okabe-Ito palette and
heatmaps from ColorBrewer's diverging RdBu, both readable with colour-vision
deficiencies. The figures' style (small fonts, no top and right spines,
[`STYLE`][tl_multilingual.study.plot.STYLE]) applies to them only: matplotlib's global settings
(``rcParams``, the backend) are left as the user set them.
[`save()`][tl_multilingual.study.plot.save] writes PNG and PDF.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from ..errors import TLMultilingualError, moved, warn
from ..persist import atomic_file

__all__ = [
    "OKABE_ITO",
    "neuron_classes",
    "language_counts",
    "deactivation_heatmap",
    "lens_curves",
    "sharing_profile",
    "class_changes",
    "shared_by_n",
    "language_changes",
    "stage_effects_heatmap",
    "generation_language",
    "save",
    "similarity_curves",
    "STYLE",
]

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CLASS_COLOURS = {
    "specific": "#D55E00", "related": "#E69F00", "general": "#0072B2",
    "all_shared": "#0072B2", "partial_shared": "#56B4E9", "non_activated": "#BBBBBB",
}
STAGE_SHADES = ("#F2F2F2", "#FFFFFF", "#F2F2F2", "#FFFFFF")
COLUMN = 3.4  # inches: one column of a two-column paper


STYLE = {"font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7, "legend.fontsize": 6,
         "xtick.labelsize": 6, "ytick.labelsize": 6, "axes.spines.top": False,
         "axes.spines.right": False}
"""The figures' matplotlib settings, applied while a figure is drawn (never globally)."""

F = TypeVar("F", bound=Callable[..., Any])


def _plt() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise TLMultilingualError('figures need matplotlib: pip install "tl-multilingual[plot]"') from None
    return plt


def _styled(draw: F) -> F:
    """Draw under [`STYLE`][tl_multilingual.study.plot.STYLE], restoring the user's settings after."""

    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> Any:
        with _plt().rc_context(STYLE):
            return draw(*args, **kwargs)

    return styled  # type: ignore[return-value]


def _axes(ax: Any, height: float = 2.2, width: float = COLUMN) -> tuple[Any, Any]:
    plt = _plt()
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=(width, height), constrained_layout=True)
    return fig, ax


STAGE_GAP = 0.07  # least distance between two stage labels, in axes widths


def _label_positions(centres: Sequence[float], gap: float = STAGE_GAP) -> list[float]:
    """Label positions (axes fractions) as near the stage centres as they can be while
    at least ``gap`` apart and inside [gap / 2, 1 - gap / 2]."""
    out: list[float] = []
    for centre in centres:
        out.append(max(centre, gap / 2, out[-1] + gap if out else -np.inf))
    for k in range(len(out) - 1, -1, -1):
        limit = 1 - gap / 2 if k == len(out) - 1 else out[k + 1] - gap
        out[k] = min(out[k], limit)
    return out


def _shade_stages(ax: Any, stages: Any) -> None:
    """Shade the four stages and number them 1-4 above the axes; labels never overlap
    (a narrow stage's label moves aside). Only a map the data support is shaded: a
    ``"weak"`` one is hatched and marked "weak stages", one the data do not support is
    not drawn and the axes say so (``gid="stage-verdict"``)."""
    if stages is None:
        return
    from ..stages.stage_map import STAGES

    level = getattr(getattr(stages, "verdict", None), "level", "supported")
    if level == "not supported":
        ax.text(1.0, 1.01, "stages not shown: not supported by the data", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=5, color="#555555", gid="stage-verdict")
        return
    weak = level == "weak"
    if weak:
        ax.text(0.0, 1.07, "weak stages (hatched)", transform=ax.transAxes, ha="left", va="bottom",
                fontsize=5, color="#555555", gid="stage-verdict")
    low, high = ax.get_xlim()
    centres, numbers = [], []
    for k, stage in enumerate(STAGES):
        span = stages.layers(stage)
        if len(span):
            ax.axvspan(span.start - 0.5, span.stop - 0.5, facecolor=STAGE_SHADES[k], zorder=0,
                       hatch="///" if weak else None, edgecolor="#bbbbbb" if weak else "none",
                       linewidth=0)
            centres.append(((span.start + span.stop - 1) / 2 - low) / (high - low))
            numbers.append(str(k + 1))
    for x, number in zip(_label_positions(centres), numbers):
        ax.text(x, 1.01, number, transform=ax.transAxes, ha="center", va="bottom", fontsize=6,
                color="#555555", gid="stage-label")


@_styled
def neuron_classes(neurons: Any, *, stages: Any = None, ax: Any = None) -> Any:
    """Specific and related neurons per layer (stacked bars, left scale) and general
    neurons (line, right scale), stages shaded and numbered 1-4.

    General neurons outnumber language neurons by orders of magnitude in many models:
    on a shared scale the language neurons would vanish, so each has its own."""
    fig, ax = _axes(ax)
    layers = np.arange(neurons.n_layers)
    bottom = np.zeros(neurons.n_layers)
    handles = []
    for cls, values in (("specific", neurons.specific().per_layer().numpy()),
                        ("related", neurons.related().per_layer().numpy())):
        handles.append(ax.bar(layers, values, bottom=bottom, color=CLASS_COLOURS[cls], label=cls, width=0.85,
                              zorder=2))
        bottom += values
    ax.set_xlabel("layer")
    ax.set_ylabel("language neurons")
    ax.set_xlim(-0.5, neurons.n_layers - 0.5)
    ax.set_ylim(0, max(bottom.max() * 1.15, 1))
    try:
        general = neurons.general().per_layer().numpy()
    except TLMultilingualError:
        general = None
    if general is not None:
        right = ax.twinx()
        right.spines["right"].set_visible(True)
        (line,) = right.plot(layers, general, color=CLASS_COLOURS["general"], lw=1.2, marker="o", ms=2,
                             label="general", zorder=3)
        right.set_ylabel("general neurons", color=CLASS_COLOURS["general"])
        right.tick_params(axis="y", colors=CLASS_COLOURS["general"])
        right.set_ylim(0, max(general.max() * 1.15, 1))
        handles.append(line)
    _shade_stages(ax, stages)
    ax.legend(handles=handles, frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


@_styled
def language_counts(neurons: Any, *, ax: Any = None) -> Any:
    """Language-specific and language-related neurons per language."""
    fig, ax = _axes(ax)
    summary = neurons.summary()
    x = np.arange(len(summary))
    ax.bar(x - 0.2, summary["specific"], width=0.4, color=CLASS_COLOURS["specific"], label="specific")
    ax.bar(x + 0.2, summary["related"], width=0.4, color=CLASS_COLOURS["related"], label="related")
    ax.set_xticks(x, summary["language"])
    ax.set_ylabel("neurons")
    ax.legend(frameon=False)
    return fig


def _compact(relative: float) -> str:
    """A relative change as ``+37%``, or ``x12`` once it passes +1000%."""
    if not np.isfinite(relative):
        return ""
    if relative >= 10:
        return f"x{1 + relative:.0f}"
    return f"{100 * relative:+.0f}%"


@_styled
def deactivation_heatmap(result: Any, variant: str | None = None, *, value: str = "relative_change",
                         ax: Any = None) -> Any:
    """The deactivation matrix of a [`DeactivationResult`][tl_multilingual.experiments.deactivation.DeactivationResult]
    (or of a [`BenchmarkEffects`][tl_multilingual.experiments.benchmarks.BenchmarkEffects]): languages whose neurons
    are deactivated (rows) x evaluated languages (columns), Zhang et al. (AAAI-26) Fig. 2
    style.

    For relative changes the colour is ``log(after / before)`` (for perplexity, the
    change in mean token NLL), so a doubling and a halving look alike; cells are
    annotated with the change itself.
    """
    table = result.matrix(variant, value=value)
    raw = table.to_numpy(dtype=float)
    if value == "relative_change":
        data = np.log(np.clip(1.0 + raw, 1e-6, None))
        label = "log(after / before)"
    else:
        data, label = raw, value.replace("_", " ")
    fig, ax = _axes(ax, height=COLUMN * 0.9)
    bound = float(np.nanmax(np.abs(data))) or 1.0
    image = ax.imshow(data, cmap="RdBu_r", vmin=-bound, vmax=bound)
    ax.set_xticks(range(table.shape[1]), table.columns)
    ax.set_yticks(range(table.shape[0]), table.index)
    ax.set_xlabel("evaluated language")
    ax.set_ylabel("neurons deactivated")
    if data.shape[0] <= 12:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                text = _compact(raw[i, j]) if value == "relative_change" else f"{raw[i, j]:.2g}"
                ax.text(j, i, text, ha="center", va="center", fontsize=4.5,
                        color="white" if abs(data[i, j]) > 0.6 * bound else "black")
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    ax.set_title(variant or "")
    return fig


@_styled
def lens_curves(summary: Any, *, stages: Any = None, ax: Any = None, n_boot: int | None = None) -> Any:
    """Mean answer probability per layer and language, with the interval bands of the
    summary it is given.

    Args:
        summary: [`LensResult.summary()`][tl_multilingual.stages.lens.LensResult.summary] (``layer``, ``quantity``, ``language``,
            ``mean``, ``ci_low``, ``ci_high``). Figures draw summaries and never resample;
            passing the `LensResult` itself still works for now, with a
            ``DeprecationWarning``: it is summarised with ``n_boot`` replicates.
        stages: a `StageMap` to shade.
        ax: axes to draw on (default: a new one-column figure).
        n_boot: only with a `LensResult`: bootstrap replicates (default 1000).

    Returns:
        The matplotlib figure.
    """
    if not isinstance(summary, pd.DataFrame):
        warn("lens_curves draws a summary: pass lens.summary() rather than the LensResult", DeprecationWarning)
        summary = summary.summary(n_boot=1000 if n_boot is None else n_boot)
    fig, ax = _axes(ax)
    n_layers = int(summary["layer"].max()) + 1
    probs = summary[summary["quantity"] == "probability"]
    for k, (lang, part) in enumerate(probs.groupby("language", sort=False)):
        colour = OKABE_ITO[k % len(OKABE_ITO)]
        ax.plot(part["layer"], part["mean"], color=colour, label=lang, lw=1.2)
        ax.fill_between(part["layer"], part["ci_low"], part["ci_high"], color=colour, alpha=0.25, lw=0)
    ax.set_xlabel("layer")
    ax.set_ylabel("probability of the answer")
    ax.set_xlim(-0.5, n_layers - 0.5)
    ax.set_ylim(0, max(1e-3, probs["ci_high"].max() * 1.15))
    _shade_stages(ax, stages)
    ax.legend(frameon=False)
    return fig


@_styled
def sharing_profile(sharing: Any, *, ax: Any = None) -> Any:
    """Percentage of neurons in each sharing class per layer (Wang et al., 2024), stacked."""
    from ..neurons.sharing_classes import SHARING_CLASSES

    fig, ax = _axes(ax)
    profile = sharing.layer_profile().pivot(index="layer", columns="class", values="percent")[list(SHARING_CLASSES)]
    ax.stackplot(profile.index, profile.to_numpy().T, labels=[c.replace("_", "-") for c in SHARING_CLASSES],
                 colors=[CLASS_COLOURS[c] for c in SHARING_CLASSES])
    ax.set_xlabel("layer")
    ax.set_ylabel("% of neurons")
    ax.set_ylim(0, 100)
    ax.set_xlim(profile.index.min(), profile.index.max())
    ax.legend(frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return fig


@_styled
def class_changes(comparison: Any, *, stages: Any = None, ax: Any = None) -> Any:
    """Change per layer and class between two models (Zhang et al. (AAAI-26) Fig. 4), from a
    [`Comparison`][tl_multilingual.experiments.comparison.Comparison] or a frame with ``layer``, ``class`` and
    ``change`` columns."""
    frame = comparison if isinstance(comparison, pd.DataFrame) else comparison.class_changes()
    fig, ax = _axes(ax)
    classes = list(dict.fromkeys(frame["class"]))
    width = 0.8 / max(len(classes), 1)
    for k, cls in enumerate(classes):
        part = frame[frame["class"] == cls]
        ax.bar(part["layer"] + (k - (len(classes) - 1) / 2) * width, part["change"], width=width,
               color=CLASS_COLOURS.get(cls, OKABE_ITO[k]), label=cls, zorder=2)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("change in neurons")
    _shade_stages(ax, stages)
    ax.legend(frameon=False, ncol=3)
    return fig


@_styled
def shared_by_n(comparison: Any, *, ax: Any = None) -> Any:
    """Neurons shared by N languages before and after (Zhang et al. (AAAI-26) Fig. 5)."""
    frame = comparison.shared_by_n()
    fig, ax = _axes(ax)
    x = frame["n_languages"].to_numpy()
    labels = getattr(comparison, "labels", ("before", "after"))
    ax.bar(x - 0.2, frame["before"], width=0.4, color=OKABE_ITO[4], label=labels[0])
    ax.bar(x + 0.2, frame["after"], width=0.4, color=OKABE_ITO[0], label=labels[1])
    ax.set_xticks(x)
    ax.set_xlabel("languages sharing the neuron")
    ax.set_ylabel("neurons")
    ax.legend(frameon=False)
    return fig


@_styled
def language_changes(comparison: Any, *, ax: Any = None) -> Any:
    """Change in specific and related neurons per language; trained languages marked
    with an asterisk (Zhang et al. (AAAI-26) Table 2)."""
    frame = comparison.per_language().pivot(index="language", columns="class", values="change")
    frame = frame.loc[list(comparison.languages)]
    trained = set(comparison.trained_languages)
    fig, ax = _axes(ax)
    x = np.arange(len(frame))
    ax.bar(x - 0.2, frame["specific"], width=0.4, color=CLASS_COLOURS["specific"], label="specific")
    ax.bar(x + 0.2, frame["related"], width=0.4, color=CLASS_COLOURS["related"], label="related")
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xticks(x, [f"{lang}*" if lang in trained else lang for lang in frame.index])
    ax.set_ylabel("change in neurons")
    ax.legend(frameon=False)
    return fig


@_styled
def stage_effects_heatmap(result: Any, value: str = "over_control", *, ax: Any = None) -> Any:
    """Stages (rows) x languages (columns) of a [`StageEffects`][tl_multilingual.experiments.stage_deactivation.StageEffects]:
    by default the relative change of the language's own perplexity beyond random
    neurons when its neurons are deactivated inside that stage only; ``*`` marks the
    cells where the stage carries the language-specific effect, ``n/m`` those not
    measured (no neurons of the language in the stage)."""
    from ..stages.stage_map import STAGES

    table = result.matrix(value)
    carries = result.matrix("carries").fillna(False).astype(bool).reindex_like(table)
    measured = (result.matrix("measured").fillna(False).astype(bool).reindex_like(table)
                if "measured" in result.frame else table.notna())
    raw = table.to_numpy(dtype=float)
    data = np.log(np.clip(1.0 + raw, 1e-6, None)) if value in ("own_change", "over_control") else raw
    fig, ax = _axes(ax, height=COLUMN * 0.8)
    bound = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 1.0
    image = ax.imshow(data, cmap="RdBu_r", vmin=-(bound or 1.0), vmax=bound or 1.0, aspect="auto")
    ax.set_xticks(range(table.shape[1]), table.columns)
    labels = [f"{STAGES.index(s) + 1} {s.replace('_', ' ')}" for s in table.index]
    ax.set_yticks(range(table.shape[0]), labels)
    ax.set_xlabel("language whose neurons are deactivated")
    if table.shape[1] <= 12:
        for i in range(table.shape[0]):
            for j in range(table.shape[1]):
                mark = "*" if carries.iloc[i, j] else ""
                text = f"{_compact(raw[i, j])}{mark}" if measured.iloc[i, j] else "n/m"
                ax.text(j, i, text, ha="center", va="center", fontsize=4.5,
                        color="white" if abs(data[i, j]) > 0.6 * (bound or 1.0) else "black")
    label = "log(1 + change beyond controls)" if value == "over_control" else value.replace("_", " ")
    fig.colorbar(image, ax=ax, shrink=0.8, label=label)
    return fig


def _whiskers(height: np.ndarray, low: Any, high: Any) -> np.ndarray:
    """Error bars from an interval's bounds: never negative (a bar's mean over prompts
    can lie outside the interval of the paired change when some prompts have no value),
    none where the bound is unknown."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return np.nan_to_num(np.clip([height - low, high - height], 0.0, None))


@_styled
def generation_language(result: Any, measure: str = "target_share", variant: str | None = None, *,
                        ax: Any = None) -> Any:
    """Bars per target language of a
    [`GenerationLanguage`][tl_multilingual.experiments.generation_language.GenerationLanguage]:
    the measure (``"target_share"`` or ``"code_switching"``) for the unmodified model,
    with the language's neurons edited, and with random neurons edited (mean over the
    controls); the edited and control bars carry the paired interval of their change
    from the baseline."""
    table = result.table(measure, variant)
    rows = result.frame[(result.frame["measure"] == measure)
                        & (result.frame["variant"] == (variant or result.frame["variant"].iloc[0]))]
    rows = rows.set_index("language").loc[table.index]
    fig, ax = _axes(ax)
    x = np.arange(len(table))
    width = 0.27
    ax.bar(x - width, table["baseline"], width, color="#BBBBBB", label="baseline")
    edited = table["value"].to_numpy(float)
    ax.bar(x, edited, width, color=OKABE_ITO[5], label=f"edited ({rows['edit'].iloc[0]})",
           yerr=_whiskers(edited, table["baseline"] + rows["ci_low"],
                          table["baseline"] + rows["ci_high"]),
           error_kw={"elinewidth": 0.6, "capsize": 1.5})
    control = table["control_value"].to_numpy(float)
    if np.isfinite(control).any():
        ax.bar(x + width, control, width, color=OKABE_ITO[0], label="random neurons",
               yerr=_whiskers(control, table["baseline"] + rows["control_ci_low"],
                              table["baseline"] + rows["control_ci_high"]),
               error_kw={"elinewidth": 0.6, "capsize": 1.5})
    ax.set_xticks(x, table.index)
    ax.set_xlabel("target language")
    ax.set_ylabel("share in the target language" if measure == "target_share"
                  else "share of segments in other languages")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False)
    return fig


def save(fig: Any, path: str | Path, formats: Sequence[str] = ("png", "pdf"), dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``path.png`` and ``path.pdf`` (and close it), each atomically."""
    plt = _plt()
    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = stem.with_suffix(f".{fmt}")
        with atomic_file(target) as staging:
            fig.savefig(staging, format=fmt, dpi=dpi, bbox_inches="tight")
        written.append(target)
    plt.close(fig)
    return written


SIMILARITY_LABELS = {
    "translation": "translation cosine",
    "non_translation": "non-translation cosine",
    "retrieval": "retrieval top-1",
}


@_styled
def similarity_curves(
    frame: pd.DataFrame,
    summary: pd.DataFrame | None = None,
    *,
    measures: Sequence[str] | None = None,
    stages: Any = None,
    axes: Any = None,
) -> Any:
    """Cross-lingual representation similarity per layer, one panel per measure: a thin
    line per language pair, their mean in black with its interval band, and the mean's
    shuffled-pair null dashed (Wu et al., 2024; Lim, Aji and Cohn, 2025).

    Args:
        frame: the frame of
            [`to_frame()`][tl_multilingual.stages.similarity.SimilarityResult.to_frame]
            (one row per layer, pair and measure).
        summary: the frame of
            [`summary()`][tl_multilingual.stages.similarity.SimilarityResult.summary]
            (the mean over pairs with intervals); without it the mean of the pairs' lines is drawn
            without a band or null.
        measures: the panels (default: every measure in ``frame``).
        stages: a `StageMap` to shade.
        axes: one axes per measure (default: a new figure, one column wide, the
            panels stacked).

    Returns:
        The matplotlib figure.
    """
    measures = list(dict.fromkeys(frame["measure"])) if measures is None else list(measures)
    missing = [m for m in measures if m not in set(frame["measure"])]
    if missing:
        raise TLMultilingualError(
            f"the frame has no measure {missing}; it has {sorted(set(frame['measure']))}"
        )
    if axes is None:
        plt = _plt()
        fig, axes = plt.subplots(
            len(measures),
            1,
            figsize=(COLUMN, 1.6 * len(measures) + 0.4),
            sharex=True,
            constrained_layout=True,
            squeeze=False,
        )
        axes = axes[:, 0]
    else:
        axes = list(np.atleast_1d(axes))
        fig = axes[0].figure
    n_layers = int(frame["layer"].max()) + 1
    for ax, measure in zip(axes, measures):
        part = frame[frame["measure"] == measure]
        for k, (pair, rows) in enumerate(part.groupby("pair", sort=False)):
            ax.plot(
                rows["layer"],
                rows["value"],
                color=OKABE_ITO[k % (len(OKABE_ITO) - 1)],
                lw=0.8,
                alpha=0.8,
                label=pair,
            )
        if summary is not None:
            mean = summary[summary["measure"] == measure]
            ax.fill_between(
                mean["layer"], mean["ci_low"], mean["ci_high"], color="black", alpha=0.15, lw=0
            )
            ax.plot(mean["layer"], mean["value"], color="black", lw=1.6, label="mean")
            ax.plot(
                mean["layer"], mean["null"], color="black", lw=0.8, ls="--", label="shuffled null"
            )
        else:
            mean = part.groupby("layer")["value"].mean()
            ax.plot(mean.index, mean.to_numpy(), color="black", lw=1.6, label="mean")
        ax.set_ylabel(SIMILARITY_LABELS.get(measure, measure.replace("_", " ")))
        ax.set_xlim(-0.5, n_layers - 0.5)
        _shade_stages(ax, stages)
    axes[-1].set_xlabel("layer")
    axes[0].legend(
        frameon=False, ncol=3, fontsize=5, loc="upper center", bbox_to_anchor=(0.5, 1.45)
    )
    return fig


# Renamed: the figure is named for what it draws (0.1.0's name warns until the next release).
__getattr__ = moved(__name__, {"ablation_heatmap": ("study.plot", "deactivation_heatmap")})
