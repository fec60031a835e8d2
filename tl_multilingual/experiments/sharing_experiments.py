"""Wang et al.'s (2024) experiments on sharing classes: correct versus incorrect items, and
strengthening (or deactivating) a class of neurons per item.

An item is answered correctly in a language when, with answer options, its gold
option has the highest log-likelihood given the prompt; without options, when the
most likely next token is the first token of the gold answer. ``logprob`` is the
log-likelihood of the gold answer (option) given the prompt. Answers and options are
scored in context by [`tl_multilingual.causal.evaluate.option_logprobs()`][tl_multilingual.causal.evaluate.option_logprobs], the
library's one implementation, under its length policy (``max_length``, ``overflow``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import distributed, resample
from ..causal.evaluate import option_logprobs
from ..causal.interventions import boost
from ..errors import TLMultilingualError
from ..inputs.items import ParallelItem, ParallelItems
from ..model.adapters import ModelAdapter, adapt
from ..model.readout import last_logits, sequence_nll
from ..model.tokens import Overflow, check_overflow, encode_answers
from ..neurons.masks import NeuronMask, parse_variant
from ..neurons.sharing_classes import SHARING_CLASSES, Sharing
from ..neurons.sharing_classes import sharing as compute_sharing
from ..provenance import check_fits
from .engine import controlled_runs, paired_interval

__all__ = ["item_correctness", "correct_vs_incorrect", "boost_experiment"]


def _score_item(
    lm: ModelAdapter,
    item: ParallelItem,
    languages: Sequence[str],
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    batch_size: int | None = None,
) -> list[tuple[bool, float]]:
    """(correct, logprob) of one item in each language; ``batch_size`` sequences per
    forward pass (None: the whole item in one)."""
    if item.options:
        rows = sum(len(item.options[lang]) for lang in languages)
        scored = option_logprobs(lm, [(item.texts[lang], item.options[lang]) for lang in languages],
                                 batch_size=min(rows, batch_size or rows), max_length=max_length,
                                 overflow=overflow)
        out = []
        for scores, _ in scored:
            best = max(range(len(scores)), key=scores.__getitem__)
            out.append((best == item.label, scores[item.label]))
        return out
    answers = [item.answer(lang) for lang in languages]
    if any(a is None for a in answers):
        raise TLMultilingualError(f"item {item.id} needs a gold answer or options in every language")
    check_overflow(overflow, split=False)
    sequences = encode_answers(lm, [item.texts[lang] for lang in languages], answers, max_length=max_length,
                               overflow=overflow)
    size = min(len(sequences), batch_size or len(sequences))
    sums, _ = sequence_nll(lm, sequences, size)
    contexts = [list(seq.ids[: seq.start]) for seq in sequences]  # the prompts as read before the answers
    predicted = []
    for start in range(0, len(contexts), size):
        batch = lm.pad(contexts[start : start + size], side="left")
        predicted += last_logits(lm, batch).argmax(-1).tolist()
    return [(pred == seq.ids[seq.start], -total) for seq, pred, total in zip(sequences, predicted, sums)]


def item_correctness(
    model: Any,
    items: ParallelItems,
    *,
    progress: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> pd.DataFrame:
    """One row per (item, language): ``correct`` and ``logprob`` of the gold answer."""
    lm = adapt(model)
    rows = []
    for item in tqdm(items, disable=not distributed.show_progress(progress), desc="scoring items"):
        for lang, (correct, logprob) in zip(items.languages, _score_item(lm, item, items.languages, max_length, overflow)):
            rows.append({"id": item.id, "language": lang, "correct": bool(correct), "logprob": logprob})
    return pd.DataFrame(rows, columns=["id", "language", "correct", "logprob"])


def correct_vs_incorrect(
    model: Any,
    items: ParallelItems,
    *,
    sharing: Sharing | None = None,
    correctness: pd.DataFrame | None = None,
    progress: bool = False,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> pd.DataFrame:
    """Sharing-class profiles of items answered correctly versus wrongly, per language.

    Returns one row per (language, correct, layer, class): the mean ``percent`` of
    ``d_mlp`` over those items and ``n_items``. ``allow_mismatch`` accepts sharing
    classes computed on another model of the same shape.
    """
    lm = adapt(model)
    if sharing is not None:
        check_fits(lm, sharing, what="the sharing classes", allow_mismatch=allow_mismatch)
    policy = {"max_length": max_length, "overflow": overflow}
    sharing = sharing if sharing is not None else compute_sharing(lm, items, progress=progress, **policy)
    correctness = correctness if correctness is not None else item_correctness(lm, items, progress=progress, **policy)
    counts = sharing.counts().double() * 100.0 / sharing.d_mlp  # [item, layer, class]
    index = {item_id: i for i, item_id in enumerate(sharing.item_ids)}
    rows = []
    for (lang, correct), group in correctness.groupby(["language", "correct"], sort=False):
        picks = [index[i] for i in group["id"]]
        mean = counts[picks].mean(0)
        for layer in range(sharing.n_layers):
            for k, cls in enumerate(SHARING_CLASSES):
                rows.append((lang, bool(correct), layer, cls, float(mean[layer, k]), len(picks)))
    return pd.DataFrame(rows, columns=["language", "correct", "layer", "class", "percent", "n_items"])


def _class_mask(sharing: Sharing, item: int, *, classes: Sequence[str]) -> NeuronMask:
    mask = NeuronMask.empty(sharing.n_layers, sharing.d_mlp)
    for cls in classes:
        mask = mask | sharing.mask(item, cls)
    return mask


def boost_experiment(
    model: Any,
    items: ParallelItems,
    *,
    classes: Sequence[str] = ("all_shared",),
    factors: Sequence[float] = (1.0, 1.5, 2.0, 3.0),
    sharing: Sharing | None = None,
    controls: int = 3,
    seed: int = 0,
    n_boot: int = 1000,
    ci: float = 0.95,
    batch_size: int = 8,
    progress: bool = True,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> pd.DataFrame:
    """Scale one sharing class of neurons per item and measure every language (Wang et al., 2024).

    Each item's own class mask (from ``sharing``) is scaled by each factor (0
    deactivates, 1 is the baseline) while the item is answered in every language;
    random masks with as many neurons per layer (drawn outside the class) are the
    control. A specialisation of [`controlled_runs()`][tl_multilingual.experiments.engine.controlled_runs] with one block per item.

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        items: parallel items with gold answers or options in every language.
        classes: sharing classes to scale (``"all_shared"``, or several joined with ``+``).
        factors: the scales applied to the class's neurons.
        sharing: the items' sharing classes (default: computed on ``items``).
        controls: random same-size-per-layer neuron sets per (class, factor) and item.
        seed: seed of the controls and of the bootstrap.
        n_boot: paired bootstrap replicates over items.
        ci: the intervals' coverage.
        batch_size: sequences (an item's languages, or its options) per forward pass.
        progress: show a progress bar.
        allow_mismatch: accept sharing classes computed on another model of the same shape.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: ``"truncate"`` or ``"error"`` (see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens]).

    Returns:
        One row per (class, factor, language): ``accuracy`` and mean ``logprob``, their
        changes from the unmodified model with paired bootstrap intervals over items,
        and the control's accuracy and log-probability.

    Raises:
        TLMultilingualError: sharing classes computed on other items.
    """
    lm = adapt(model)
    if sharing is not None:
        check_fits(lm, sharing, what="the sharing classes", allow_mismatch=allow_mismatch)
    sharing = sharing if sharing is not None else compute_sharing(lm, items, progress=False, max_length=max_length,
                                                                  overflow=overflow)
    if sharing.item_ids != [item.id for item in items]:
        raise TLMultilingualError("the sharing classes were computed on other items")
    langs = list(items.languages)
    item_list = list(items)
    parts = {cls: parse_variant(cls, SHARING_CLASSES) for cls in classes}
    conditions = {
        (cls, factor): partial(_class_mask, sharing, classes=parts[cls]) for cls in classes for factor in factors
    }

    def measure(i: int) -> np.ndarray:
        scores = _score_item(lm, item_list[i], langs, max_length, overflow, batch_size)
        return np.array(scores, dtype=float)

    def intervene(key: tuple[str, float], mask: NeuronMask) -> Any:
        return boost(lm, mask, factor=key[1], allow_mismatch=allow_mismatch)

    runs = controlled_runs(conditions, measure, intervene, n_blocks=len(item_list),
                           controls=controls, seed=seed, desc="boost experiment", progress=progress)
    baseline = np.stack(runs.baseline)  # [item, language, (correct, logprob)]
    unit_draws = resample.draws(len(item_list), n_boot, seed)
    rows = []
    for (cls, factor), run in runs.conditions.items():
        hit = np.stack(run.hit)
        ctrl = np.stack([np.stack(c) for c in run.controls]) if controls else None  # [control, item, lang, 2]
        for p, lang in enumerate(langs):
            acc_change, acc_low, acc_high = paired_interval(hit[:, p, 0], baseline[:, p, 0],
                                                            unit_draws, ci)
            lp_change, lp_low, lp_high = paired_interval(hit[:, p, 1], baseline[:, p, 1],
                                                         unit_draws, ci)
            rows.append({
                "class": cls, "factor": factor, "language": lang, "mean_neurons": float(np.mean(run.sizes)),
                "baseline_accuracy": baseline[:, p, 0].mean(), "accuracy": hit[:, p, 0].mean(),
                "accuracy_change": acc_change, "accuracy_ci_low": acc_low, "accuracy_ci_high": acc_high,
                "baseline_logprob": baseline[:, p, 1].mean(), "logprob": hit[:, p, 1].mean(),
                "logprob_change": lp_change, "logprob_ci_low": lp_low, "logprob_ci_high": lp_high,
                "control_accuracy": ctrl[:, :, p, 0].mean() if ctrl is not None else float("nan"),
                "control_logprob_change": (ctrl[:, :, p, 1] - baseline[None, :, p, 1]).mean()
                if ctrl is not None else float("nan"),
            })
    return pd.DataFrame(rows)
