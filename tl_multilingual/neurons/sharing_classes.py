"""Neuron sharing across languages per parallel item (Wang et al. (2024), Wang et al.).

For one item rendered in ``P`` languages, neuron ``(l, j)`` is active in language
``p`` when its value exceeds the threshold at the chosen position (the last prompt
token, or any token of the item). With ``S`` the number of languages it is active
in, the neuron is

- **all-shared** when ``S == P``; **non-activated** when ``S == 0``;
- **specific** (to that language) when ``S == 1``; **partial-shared** otherwise.

[`sharing()`][tl_multilingual.neurons.sharing_classes.sharing] stores, per item, layer and neuron, one bit per language (a bitmask
of ``ceil(P / 8)`` bytes, one byte for up to 8 languages), never activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..errors import SaveError, TLMultilingualError
from ..hub import HubMixin
from ..inputs.items import ParallelItems
from ..model.adapters import ModelAdapter, adapt
from ..model.tokens import Overflow, fit
from ..persist import manifest_field, read_result, write_result
from ..provenance import model_record
from .masks import NeuronMask

__all__ = ["SHARING_CLASSES", "Sharing", "sharing", "item_activations", "classify_codes", "language_codes"]

SHARING_CLASSES = ("all_shared", "partial_shared", "specific", "non_activated")
_KIND = "tl_multilingual.Sharing"
Position = Literal["last", "any"]


def _code_dtype(n_languages: int) -> torch.dtype:
    for dtype, bits in ((torch.uint8, 8), (torch.int16, 15), (torch.int32, 31), (torch.int64, 63)):
        if n_languages <= bits:
            return dtype
    raise TLMultilingualError(f"at most 63 languages per item, got {n_languages}")


def language_codes(active: Bool[Tensor, "lang ..."]) -> Int[Tensor, "..."]:
    """Bitmask of the languages in which each neuron is active (bit ``p`` = language ``p``)."""
    dtype = _code_dtype(active.shape[0])
    codes = torch.zeros(active.shape[1:], dtype=dtype, device=active.device)
    for p in range(active.shape[0]):
        codes |= active[p].to(dtype) << p
    return codes


def _popcount(codes: Tensor, n_languages: int) -> Tensor:
    count = torch.zeros(codes.shape, dtype=torch.int8, device=codes.device)
    for p in range(n_languages):
        count += ((codes >> p) & 1).to(torch.int8)
    return count


def classify_codes(codes: Int[Tensor, "..."], n_languages: int) -> Int[Tensor, "..."]:
    """Class index per neuron (0 all-shared, 1 partial-shared, 2 specific, 3 non-activated)."""
    count = _popcount(codes, n_languages)
    out = torch.full(codes.shape, 1, dtype=torch.int8, device=codes.device)
    out[count == n_languages] = 0
    out[count == 1] = 2
    out[count == 0] = 3
    return out


def _read_positions(
    lm: ModelAdapter,
    texts: Sequence[str],
    position: Position,
    batch_size: int,
    sink: Callable[[Tensor, Tensor], None],
    progress: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> list[int]:
    """Run the texts and hand ``sink(rows, values [batch, n_layers, d_mlp])`` the neuron
    values at the last token, or their maximum over the text's tokens (BOS excluded),
    once per batch (the layers' values are stacked on the device of the last layer).
    Texts longer than ``max_length`` lose their oldest tokens (or are refused).

    Under ``torch.distributed`` each rank reads its share of the texts; returns the
    indices this rank read (the callers combine the ranks' rows).
    """
    ids, _ = fit(lm, lm.tokenize(list(texts)), max_length=max_length, overflow=overflow, what="text")
    mine = distributed.shard(len(ids), [len(row) for row in ids])
    first = 1 if lm.prepend_bos and lm.bos_token_id is not None else 0
    show = distributed.show_progress(progress)
    for lo in tqdm(range(0, len(mine), batch_size), disable=not show, desc="reading", leave=False):
        picked_rows = mine[lo : lo + batch_size]
        chunk = [ids[i] for i in picked_rows]
        batch = lm.pad(chunk)
        real = batch.attention_mask.bool()
        rows = torch.as_tensor(picked_rows)
        width = real.shape[1]
        last = batch.last
        counted = real.clone()
        if first:
            lengths = torch.as_tensor([len(row) for row in chunk], device=real.device)
            start = width - lengths if batch.padding_side == "left" else torch.zeros_like(last)
            counted[torch.arange(len(chunk)), start] = lengths == 1  # keep BOS only if alone
        values: dict[int, Tensor] = {}
        hooks = [
            (lm.read_hook(layer), _position_reader(lm, layer, position, last, counted, values))
            for layer in range(lm.n_layers)
        ]
        lm.forward(batch, fwd_hooks=hooks, logits=False)
        device = values[lm.n_layers - 1].device
        sink(rows, torch.stack([values[layer].to(device) for layer in range(lm.n_layers)], dim=1))
    return mine


def _position_reader(
    lm: ModelAdapter, layer: int, position: Position, last: Tensor, counted: Tensor, store: dict[int, Tensor]
) -> Callable[..., None]:
    def read(tensor: Tensor, hook: Any) -> None:
        values = lm.neuron_values(layer, tensor)
        if position == "last":
            picked = values[torch.arange(values.shape[0], device=values.device), last.to(values.device)]
        else:
            fill = torch.finfo(values.dtype).min
            picked = values.masked_fill(~counted[..., None].to(values.device), fill).amax(1)
        store[layer] = picked

    return read


def item_activations(
    model: Any,
    texts: Sequence[str],
    *,
    position: Position = "last",
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> Float[Tensor, "item layer neuron"]:
    """Neuron values of each text at its last token, or their maximum over its tokens
    (``position="any"``): the quantity [`sharing()`][tl_multilingual.neurons.sharing_classes.sharing] thresholds. ``max_length`` and
    ``overflow``: the length policy of [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens] (longer texts lose
    their oldest tokens, or are refused)."""
    lm = adapt(model)
    out = torch.zeros(len(texts), lm.n_layers, lm.d_mlp)

    def keep(rows: Tensor, values: Tensor) -> None:
        out[rows] = values.float().cpu()

    _read_positions(lm, texts, position, batch_size, keep, max_length=max_length, overflow=overflow)
    return distributed.all_reduce_sum(out)  # each rank filled its own rows


@dataclass
class Sharing(HubMixin):
    """Sharing classes of every neuron on every parallel item.

    Attributes:
        languages: the ``P`` languages, in bit order.
        item_ids: the items, in order.
        codes: ``[n_items, n_layers, d_mlp]`` bitmask of the languages each neuron is
            active in.
        threshold, position: how "active" was decided.
        model: the model the classes were computed on (name, architecture), if known.
    """

    languages: tuple[str, ...]
    item_ids: list[str]
    codes: Tensor
    threshold: float
    position: str
    model: dict[str, Any] | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the classes come from (name, architecture, when known) and its shape."""
        return model_record(self.model, self.n_layers, self.d_mlp)

    @property
    def n_layers(self) -> int:
        return self.codes.shape[1]

    @property
    def d_mlp(self) -> int:
        return self.codes.shape[2]

    def classes(self) -> Int[Tensor, "item layer neuron"]:
        """Class index per item and neuron, in the order of ``SHARING_CLASSES``."""
        return classify_codes(self.codes, len(self.languages))

    def counts(self) -> Int[Tensor, "item layer cls"]:
        """Neurons per item, layer and class."""
        classes = self.classes().long()
        return torch.nn.functional.one_hot(classes, len(SHARING_CLASSES)).sum(2)

    def mask(self, item: int | str, cls: str, language: str | None = None) -> NeuronMask:
        """The neurons of a class on one item (``specific`` can be narrowed to a language)."""
        i = self.item_ids.index(item) if isinstance(item, str) else item
        if cls not in SHARING_CLASSES:
            raise TLMultilingualError(f"unknown sharing class {cls!r}; use one of {SHARING_CLASSES}")
        grid = classify_codes(self.codes[i], len(self.languages)) == SHARING_CLASSES.index(cls)
        if language is not None:
            if cls != "specific":
                raise TLMultilingualError("only the 'specific' class belongs to one language")
            bit = self.languages.index(language)
            grid &= ((self.codes[i] >> bit) & 1).bool()
        return NeuronMask(grid, name=f"item {self.item_ids[i]}: {cls}" + (f" ({language})" if language else ""),
                          model=self.model)

    def to_frame(self) -> pd.DataFrame:
        """One row per (item, layer, class): ``count`` and ``percent`` of ``d_mlp``."""
        counts = self.counts().numpy()
        items, layers, classes = np.meshgrid(
            np.arange(counts.shape[0]), np.arange(counts.shape[1]), np.arange(counts.shape[2]), indexing="ij"
        )
        return pd.DataFrame(
            {
                "item": [self.item_ids[i] for i in items.reshape(-1)],
                "layer": layers.reshape(-1),
                "class": [SHARING_CLASSES[c] for c in classes.reshape(-1)],
                "count": counts.reshape(-1),
                "percent": 100.0 * counts.reshape(-1) / self.d_mlp,
            }
        )

    def layer_profile(self, items: Sequence[int] | None = None) -> pd.DataFrame:
        """Mean (and standard deviation over items) percentage of each class per layer."""
        counts = self.counts().double() * 100.0 / self.d_mlp
        if items is not None:
            counts = counts[list(items)]
        mean, sd = counts.mean(0), counts.std(0) if counts.shape[0] > 1 else torch.zeros_like(counts[0])
        rows = [
            (layer, cls, float(mean[layer, k]), float(sd[layer, k]))
            for layer in range(self.n_layers)
            for k, cls in enumerate(SHARING_CLASSES)
        ]
        return pd.DataFrame(rows, columns=["layer", "class", "percent", "sd"])

    def stability(self) -> pd.DataFrame:
        """Per layer and class: percentage of neurons that have that class on every item
        (Wang et al.'s (2024) "same class on every example"), and ``any`` for all classes together."""
        classes = self.classes()
        same = (classes == classes[:1]).all(0)  # [layer, neuron]
        rows = []
        for layer in range(self.n_layers):
            for k, cls in enumerate(SHARING_CLASSES):
                stable = same[layer] & (classes[0, layer] == k)
                rows.append((layer, cls, 100.0 * float(stable.sum()) / self.d_mlp))
            rows.append((layer, "any", 100.0 * float(same[layer].sum()) / self.d_mlp))
        return pd.DataFrame(rows, columns=["layer", "class", "percent"])

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path`` (safetensors + manifest)."""
        manifest = {"languages": list(self.languages), "item_ids": self.item_ids,
                    "threshold": self.threshold, "position": self.position, "model": self.model}
        return write_result(path, kind=_KIND, tensors={"codes": self.codes}, manifest=manifest)

    @classmethod
    def load(cls, path: str | Path) -> Sharing:
        """Load classes saved with [`save()`][tl_multilingual.neurons.sharing_classes.Sharing.save], checking every manifest field.

        Raises:
            SaveError: the folder is missing, damaged or edited, or its manifest is
                invalid or disagrees with the tensor.
        """
        tensors, manifest = read_result(path, kind=_KIND)
        where = Path(path) / "manifest.json"
        languages = manifest_field(
            manifest, "languages", list, where=where, expect="a list of distinct language codes",
            check=lambda v: 0 < len(v) <= 63 and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v),
        )
        item_ids = manifest_field(manifest, "item_ids", list, where=where, expect="a list of item ids",
                                  check=lambda v: all(isinstance(x, str) for x in v))
        threshold = manifest_field(manifest, "threshold", (int, float), where=where, expect="a finite number",
                                   check=lambda v: v == v and abs(v) != float("inf"))
        position = manifest_field(manifest, "position", str, where=where, expect="'last' or 'any'",
                                  check=lambda v: v in ("last", "any"))
        model = manifest_field(manifest, "model", (dict, type(None)), where=where, default=None)
        codes = tensors.get("codes")
        if codes is None or codes.ndim != 3 or codes.shape[0] != len(item_ids):
            raise SaveError(f"{path}: the codes must be [n_items = {len(item_ids)}, n_layers, d_mlp], got "
                            f"{None if codes is None else list(codes.shape)}")
        if codes.dtype != _code_dtype(len(languages)) or bool((codes < 0).any()) or bool(
            (codes >> len(languages)).any()
        ):
            raise SaveError(f"{path}: the codes are not bitmasks of the {len(languages)} languages the manifest names")
        return cls(tuple(languages), list(item_ids), codes, float(threshold), position, model)

    def __repr__(self) -> str:
        return (
            f"Sharing({len(self.item_ids)} items, {len(self.languages)} languages, {self.n_layers}x{self.d_mlp}, "
            f"threshold={self.threshold}, position={self.position!r})"
        )


def sharing(
    model: Any,
    items: ParallelItems,
    *,
    position: Position = "last",
    threshold: float | Sequence[float] = 0.0,
    batch_size: int = 8,
    progress: bool = True,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> Sharing | dict[float, Sharing]:
    """Classify every neuron on every parallel item (see the module docstring).

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        items: [`ParallelItems`][tl_multilingual.inputs.items.ParallelItems]; their prompts are read in every language.
        position: ``"last"`` prompt token, or ``"any"`` token of the item.
        threshold: activation threshold, or several (Wang et al. (2024) studies 0 to 0.5): then a
            dict ``{threshold: Sharing}`` from the same forward passes.
        max_length: longest prompt fed to the model (default: its context size).
        overflow: longer prompts lose their oldest tokens (``"truncate"``, with a
            warning) or are refused (``"error"``); see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens].
    """
    lm = adapt(model)
    if position not in ("last", "any"):
        raise TLMultilingualError(f"position must be 'last' or 'any', got {position!r}")
    thresholds = [float(threshold)] if isinstance(threshold, (int, float)) else [float(t) for t in threshold]
    dtype = _code_dtype(len(items.languages))
    codes = {t: torch.zeros(len(items), lm.n_layers, lm.d_mlp, dtype=dtype) for t in thresholds}
    for p, lang in enumerate(tqdm(items.languages, disable=not distributed.show_progress(progress), desc="sharing")):

        def mark(rows: Tensor, values: Tensor, p: int = p) -> None:
            above = torch.stack([values > t for t in thresholds]).cpu()  # one transfer per batch
            for grid, bits in zip(codes.values(), above):
                grid[rows] |= bits.to(dtype) << p

        _read_positions(lm, items.texts(lang), position, batch_size, mark, max_length=max_length, overflow=overflow)
    codes = {t: distributed.all_reduce_sum(grid) for t, grid in codes.items()}  # disjoint rows per rank
    ids = [item.id for item in items]
    record = {k: lm.describe()[k] for k in ("name", "architecture")}
    results = {t: Sharing(items.languages, ids, grid, t, position, record) for t, grid in codes.items()}
    return results[thresholds[0]] if isinstance(threshold, (int, float)) else results
