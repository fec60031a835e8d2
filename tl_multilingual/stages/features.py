"""What a stage map is fitted to: per-layer features of two signals.

- The neuron classes of [`LanguageNeurons`][tl_multilingual.neurons.classes.LanguageNeurons] (Zhang et al., AAAI-26):
  per layer ``f_language = log(1 + language neurons)`` (specific or related; the log
  keeps a few layers with many language neurons from dominating) and
  ``f_general = general neurons / d_mlp``
  ([`neuron_features()`][tl_multilingual.stages.features.neuron_features]).
- The multilingual logit lens of a [`LensResult`][tl_multilingual.stages.lens.LensResult] (Wendler et al., 2024): per
  layer the mean probability of the target-language answer ``f_target``, of the
  English answer ``f_english`` (the latent language Wendler et al. look for) and the
  entropy of the next-token distribution ``f_entropy``
  ([`lens_features()`][tl_multilingual.stages.features.lens_features]).

- Cross-lingual representation similarity of a
  [`SimilarityResult`][tl_multilingual.stages.similarity.SimilarityResult] (Wu et al., 2024; Lim, Aji and Cohn,
  2025): per layer the mean over items and language pairs of the translation
  similarity minus its shuffled-pair null, ``f_similarity``, and the same for
  translation retrieval, ``f_retrieval``
  ([`similarity_features()`][tl_multilingual.stages.features.similarity_features]).

Before a fit every feature is standardised across layers (mean 0, standard
deviation 1; a constant feature stays 0, a missing value takes the feature's mean),
so that each feature weighs the same whatever its unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from ..errors import TLMultilingualError
from ..neurons.classes import LanguageNeurons

if TYPE_CHECKING:
    from .lens import LensResult
    from .similarity import SimilarityResult

__all__ = ["neuron_features", "lens_features", "similarity_features"]


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


def similarity_features(
    similarity: SimilarityResult, items: torch.Tensor | None = None
) -> pd.DataFrame:
    """Per layer: the mean over items and language pairs of the translation similarity
    and of translation retrieval, each minus its shuffled-pair null (``translation``,
    ``retrieval``, and the segmentation features ``f_similarity`` and ``f_retrieval``,
    the same numbers).

    Args:
        similarity: a [`SimilarityResult`][tl_multilingual.stages.similarity.SimilarityResult].
        items: indices of the items to use (a bootstrap draw; default: every item).
    """
    from .similarity import MEASURES

    out = {}
    for measure, column in (("translation", "similarity"), ("retrieval", "retrieval")):
        m = MEASURES.index(measure)
        values, null = similarity.values[m], similarity.null[m]  # [item, pair, layer]
        if items is not None:
            values, null = values[items], null[items]
        out[measure] = (values - null).mean(dim=(0, 1)).numpy().astype(float)
        out[f"f_{column}"] = out[measure]
    return pd.DataFrame(out)


def _standardise(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=float)
    x = np.where(np.isfinite(x), x, np.nanmean(np.where(np.isfinite(x), x, np.nan), 0) if len(x) else 0.0)
    x = np.nan_to_num(x)
    scale = x.std(0)
    return (x - x.mean(0)) / np.where(scale > 0, scale, 1.0)
