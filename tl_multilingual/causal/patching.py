"""Cross-language neuron patching read through the logit lens: [`patch_neurons()`][tl_multilingual.causal.patching.patch_neurons].

For parallel prompts (the same content in a source and a target language), the
masked neurons' write-hook values of the source run replace those of the target run,
at the last position (``align="last"``) or at every position (``align="all"``, for
pairs of equal token length). The effect is read at every layer through the lens
(probability of each language's answer) and at the output (the last layer), for the
baseline (the unpatched target run), the patched run, and random masks with the same
number of neurons per layer (the control). In TransformerLens's terms the *clean* run
is the source whose activations are patched in; the target run without patching is
called the baseline here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import distributed, resample
from ..errors import MaskError, TLMultilingualError
from ..inputs.prompts import LensPrompt
from ..model.adapters import ModelAdapter, adapt
from ..model.readout import layer_logprobs
from ..model.tokens import Overflow, fit
from ..neurons.masks import NeuronMask
from ..provenance import check_fits
from ..stages.lens import answer_sets, measure
from .interventions import Edit, Interventions, Layers, record

__all__ = ["patch_neurons", "PatchResult"]


@dataclass
class PatchResult:
    """Answer probabilities per condition, prompt, layer and language.

    Attributes:
        conditions: ``"baseline"`` (the unpatched target run), ``"patched"``, then
            ``"control_<seed>"``.
        languages: the languages read out.
        probability: ``[n_conditions, n_prompts, n_layers, n_languages]``.
        n_neurons: neurons patched (per mask; the controls have as many per layer).
    """

    conditions: tuple[str, ...]
    languages: tuple[str, ...]
    probability: Tensor
    n_neurons: int

    def to_frame(self) -> pd.DataFrame:
        """One row per (condition, prompt, layer, language): ``probability``."""
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in self.probability.shape), indexing="ij"), -1)
        grid = grid.reshape(-1, 4)
        return pd.DataFrame(
            {
                "condition": [self.conditions[i] for i in grid[:, 0]],
                "prompt": grid[:, 1],
                "layer": grid[:, 2],
                "language": [self.languages[i] for i in grid[:, 3]],
                "probability": self.probability.reshape(-1).numpy(),
            }
        ).dropna(subset=["probability"]).reset_index(drop=True)

    def summary(self, *, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """Per condition (``baseline``, ``patched``, ``control`` pooled over seeds), layer
        and language: mean probability, and the mean change from ``baseline`` with a paired
        percentile bootstrap interval over prompts ([`tl_multilingual.resample`][tl_multilingual.resample];
        every condition shares the same draws)."""
        probs = self.probability.numpy()
        unit_draws = resample.draws(probs.shape[1], n_boot, seed)
        groups = {"baseline": [0], "patched": [1], "control": list(range(2, len(self.conditions)))}
        rows = []
        for name, idx in groups.items():
            if not idx:
                continue
            values = probs[idx].mean(0)  # [prompt, layer, lang]
            delta, low, high = resample.mean_interval(values, baseline=probs[0], ci=ci, unit_draws=unit_draws)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # resample's NaN policy: NaN prompts left out
                mean = np.nanmean(values, 0)
            for layer in range(values.shape[1]):
                for k, lang in enumerate(self.languages):
                    rows.append((name, layer, lang, mean[layer, k], delta[layer, k], low[layer, k], high[layer, k]))
        return pd.DataFrame(rows, columns=["condition", "layer", "language", "probability", "change", "ci_low", "ci_high"])

    def output(self) -> pd.DataFrame:
        """The last layer (the model's own output) of [`summary()`][tl_multilingual.causal.patching.PatchResult.summary]."""
        frame = self.summary()
        return frame[frame["layer"] == frame["layer"].max()].reset_index(drop=True)


def _prompts(items: Sequence[LensPrompt | str]) -> list[LensPrompt]:
    return [p if isinstance(p, LensPrompt) else LensPrompt(p) for p in items]


def _source(lm: ModelAdapter, src_batch: Any, tgt_batch: Any, align: str) -> tuple[Tensor, Tensor]:
    """The source run's write-hook values, shaped to patch the target batch, and the
    target positions to patch."""
    values = record(lm, src_batch)  # [batch, pos, layer, neuron]
    tgt_mask = tgt_batch.attention_mask.bool()
    if align == "last":
        src_last = src_batch.last
        rows = torch.arange(values.shape[0], device=values.device)
        source = values[rows, src_last][:, None]  # [batch, 1, layer, neuron], broadcast over positions
        tgt_last = tgt_batch.last
        positions = torch.zeros_like(tgt_mask)
        positions[rows, tgt_last] = True
    else:
        if not torch.equal(src_batch.attention_mask.sum(1), tgt_batch.attention_mask.sum(1)):
            raise TLMultilingualError("align='all' needs source and target prompts of equal token length")
        if src_batch.input_ids.shape != tgt_batch.input_ids.shape:
            raise TLMultilingualError("align='all' needs source and target batches padded alike")
        source, positions = values, tgt_mask
    return source, positions


def patch_neurons(
    model: Any,
    *,
    source: Sequence[LensPrompt | str],
    target: Sequence[LensPrompt | str],
    mask: NeuronMask,
    readout: Sequence[str] | None = None,
    align: Literal["last", "all"] = "last",
    layers: Layers = None,
    controls: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    allow_mismatch: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> PatchResult:
    """Patch ``mask``'s neurons from source-language runs into target-language runs.

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        source: prompts in the source language.
        target: the same prompts in the target language (parallel to ``source``); the
            answers read come from them ([`LensPrompt`][tl_multilingual.inputs.prompts.LensPrompt]).
        mask: the neurons patched (restrict it with ``layers``, a range such as
            ``stage_map.layers("shared_reasoning")``).
        readout: languages whose answer probability is read (default: all of target's).
        align: ``"last"`` position, or ``"all"`` positions for equal-length pairs.
        controls: random masks of the same size per layer (drawn outside ``mask``).
        allow_mismatch: accept a mask identified on another model of the same shape.
        max_length: longest prompt fed to the model (default: its context size).
        overflow: longer prompts lose their oldest tokens (``"truncate"``, with a
            warning) or are refused (``"error"``); see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].

    Raises:
        MaskError: a mask of another shape, or of another model (unless ``allow_mismatch``).
        TLMultilingualError: source and target not parallel, or no answer to read (plain
            strings without ``readout``).
    """
    lm = adapt(model)
    check_fits(lm, mask, what="the mask", error=MaskError, allow_mismatch=allow_mismatch)
    sources, targets = _prompts(source), _prompts(target)
    if len(sources) != len(targets) or not targets:
        raise TLMultilingualError(f"source and target must be parallel: {len(sources)} vs {len(targets)} prompts")
    if layers is not None:
        mask = mask.restrict(lm.layer_range(layers))
    languages = list(readout) if readout is not None else list(dict.fromkeys(a for p in targets for a in p.answers))
    if not languages:
        raise TLMultilingualError(
            "the target prompts carry no answers to read: give prompts with answers "
            "(tlm.prompts.translation) or name the languages read with readout=")
    masks = [None, mask, *mask.controls(controls, seed=seed)]
    sets = answer_sets(lm, targets, languages)
    out = torch.full((len(masks), len(targets), lm.n_layers, len(languages)), float("nan"))
    side = "left" if align == "last" else lm.padding_side
    src_ids, _ = fit(lm, lm.tokenize([p.text for p in sources]), max_length=max_length, overflow=overflow,
                     what="source prompt")
    tgt_ids, _ = fit(lm, lm.tokenize([p.text for p in targets]), max_length=max_length, overflow=overflow,
                     what="target prompt")
    mine = distributed.shard(len(targets))  # each rank patches its share of the prompts
    for lo in range(0, len(mine), batch_size):
        chunk = mine[lo : lo + batch_size]
        src_batch = lm.pad([src_ids[i] for i in chunk], side=side)
        tgt_batch = lm.pad([tgt_ids[i] for i in chunk], side=side)
        values, positions = _source(lm, src_batch, tgt_batch, align)
        for c, m in enumerate(masks):
            hooks = [] if m is None else Interventions(lm, [Edit(m, "patch", values, positions)]).hooks()
            logp = layer_logprobs(lm, tgt_batch, fwd_hooks=hooks)
            out[c, chunk] = measure(logp, [sets[i] for i in chunk])[0]
    out = distributed.gather_rows(out.transpose(0, 1)[mine], mine, len(targets)).transpose(0, 1).contiguous()
    names = ("baseline", "patched", *(f"control_{c}" for c in range(controls)))
    return PatchResult(names, tuple(languages), out, mask.count())
