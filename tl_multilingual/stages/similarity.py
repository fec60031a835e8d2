"""Cross-lingual representation similarity per layer:
[`representation_similarity()`][tl_multilingual.stages.similarity.representation_similarity].

Translation-equivalent inputs become most alike in a model's middle layers: the
"semantic hub" of Wu et al. (2024, ICLR 2025), where inputs of every language and
modality meet in a shared space; the language-agnostic middle of the "language-specific
latent process" of Lim, Aji and Cohn (2025); the interlingual local overlap that
Wilie et al. (2025) measure; the middle-layer alignment that Liu and Niehues (2025)
strengthen by training. That is what Zhang et al. (AAAI-26) call shared
semantic reasoning, and this signal needs neither neuron classes nor the unembedding.

**What is measured.** A parallel [`Corpus`][tl_multilingual.inputs.corpus.Corpus] holds
translation-equivalent texts at the same index in every language (item ``i``). One
streaming pass pools the residual stream after every block ``l`` (the stream the logit
lens reads, at the layer
indices of the lens and the stage map; the embedding is not included: its vectors are
language-specific by construction, one row per token) into one vector per text:
``pooling="mean"`` averages the counted tokens (every real token after BOS; padding and
BOS never count), ``"last"`` takes the last token. Then, per layer and language:

- **centring**: ``mu_k`` is the mean of the pooled vectors of every text of language
  ``k`` in the corpus (all items, the same texts that are compared), and each vector
  becomes ``z = (x - mu_k) / ||x - mu_k||``. Language-identity offsets otherwise
  dominate every cosine (Lim, Aji and Cohn, 2025; Liu and Niehues, 2025). Intervals are
  conditional on these means (they are not re-estimated per bootstrap replicate);
- per language pair ``(a, b)`` the cosines ``C[i, j] = z_a,i . z_b,j`` of every item
  pair. Per item ``i``:

  - ``translation``: ``C[i, i]``, the similarity of the two translations;
  - ``non_translation``: the mean of ``C[i, j]`` over ``j != i`` and of ``C[j, i]``
    over ``j != i`` (the item against the other language's other texts, both ways);
  - ``retrieval``: translation retrieval, top-1 among the other language's ``n``
    candidates, averaged over both directions: 1 when ``C[i, i]`` is the strict
    largest of row ``i`` (a's text finds its translation among b's texts) and of
    column ``i`` (and the reverse), 0.5 for one direction, 0 for none; a tie is a
    miss. Chance is ``1 / n``.

**The shuffled-pair null.** The same three measures with the pairs relabelled: for
each of ``n_shuffles`` random derangements ``pi`` of the items (no item keeps its own
partner), item ``i`` of ``a`` is paired with item ``pi(i)`` of ``b`` and the measures
are computed as if those were the translations; the null of item ``i`` is its mean
over the shuffles. It says what the measures give when the pairs carry no shared
content: ``1 / n`` for ``retrieval``, and near 0 for ``translation`` (a little below:
the centred vectors of a language sum to zero, so a shuffled pair's expected cosine is
about ``-translation / (n - 1)``, as is ``non_translation``'s). The derangements are kept
in the result (``shuffles``).

**Intervals** are percentile bootstraps over items from
[`tl_multilingual.resample`][tl_multilingual.resample]: one draw of items is shared by every
layer, pair and measure and by the null, so ``excess = measure - null`` is a paired
difference and the mean over pairs has an interval of its own.

**Memory.** The pass never keeps ``[texts, positions, d_model]``: each batch is pooled
inside the hook. It keeps one pooled vector per text and layer, float32, on the device
of that layer: ``n_items x n_languages x n_layers x d_model x 4`` bytes (1,000 items in
10 languages on a 32-layer, 4096-wide model: 5.2 GB), acceptable for the parallel
corpora of this field (FLORES+ has 997 dev sentences) but not for much larger ones:
pass fewer items (``corpus.head(n)``) or fewer languages. Cosines are computed per
layer and pair on that device (``[n_items, n_items]`` at a time).

Under ``torch.distributed`` each rank pools its share of the items (every language of
an item) and the pooled vectors are gathered in item order before anything else is
computed, so every rank returns what one process returns (up to summation order).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed, resample
from ..errors import CorpusError, SaveError, TLMultilingualError, warn
from ..inputs.corpus import Corpus
from ..model.adapters import ModelAdapter, adapt
from ..model.tokens import Encoded, Overflow, batches, check_overflow, counted_mask, encode_language
from ..persist import manifest_field, read_result, write_result
from ..provenance import model_record

__all__ = ["representation_similarity", "SimilarityResult", "MEASURES", "POOLINGS"]

_KIND = "tl_multilingual.SimilarityResult"
MEASURES = ("translation", "non_translation", "retrieval")
"""The measures, in the order of ``SimilarityResult.values``' first axis."""
POOLINGS = ("mean", "last")
Pooling = Literal["mean", "last"]
MIN_ITEMS = 3  # two items leave centred vectors that are each other's negatives
_BOOT_ELEMENTS = 1 << 24  # bootstrap replicate values materialised at once


@dataclass
class SimilarityResult:
    """Per item, language pair and layer: the three measures and their shuffled-pair
    null (see the module docstring for the definitions).

    Attributes:
        languages: the corpus languages, in order.
        pairs: the language pairs ``(a, b)``, every unordered pair in corpus order.
        values: ``[3, n_items, n_pairs, n_layers]`` float64, measures in the order of
            [`MEASURES`][tl_multilingual.stages.similarity.MEASURES] (cosines in [-1, 1], retrieval
            in {0, 0.5, 1}).
        null: the same under shuffled pairs, each item's mean over the shuffles.
        shuffles: ``[n_shuffles, n_items]`` the derangements: item ``i`` of ``a`` is
            paired with item ``shuffles[s, i]`` of ``b`` in shuffle ``s``.
        pooling: ``"mean"`` over counted tokens or ``"last"`` token.
        include_bos: whether the BOS position was pooled too.
        model: the model the vectors come from (``ModelAdapter.describe()``), if known.
        corpus: fingerprint, items, ``max_length`` and ``overflow`` of the pass.
    """

    languages: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    values: Float[Tensor, "measure item pair layer"]
    null: Float[Tensor, "measure item pair layer"]
    shuffles: Int[Tensor, "shuffle item"]
    pooling: str
    include_bos: bool = False
    model: dict[str, Any] | None = None
    corpus: dict[str, Any] | None = None

    @property
    def n_items(self) -> int:
        return self.values.shape[1]

    @property
    def n_layers(self) -> int:
        return self.values.shape[3]

    @property
    def provenance(self) -> dict[str, Any]:
        """The model the result comes from (name, architecture, when known) and its shape."""
        d_mlp = (self.model or {}).get("d_mlp")
        return model_record(self.model, self.n_layers, d_mlp)

    def __repr__(self) -> str:
        return (
            f"SimilarityResult({self.n_items} items, {len(self.languages)} languages, "
            f"{len(self.pairs)} pairs, "
            f"{self.n_layers} layers, pooling={self.pooling!r})"
        )

    def _measure(self, measure: str) -> int:
        if measure not in MEASURES:
            raise TLMultilingualError(f"unknown measure {measure!r}; use one of {MEASURES}")
        return MEASURES.index(measure)

    def _rows(
        self, values: np.ndarray, null: np.ndarray, unit_draws: np.ndarray, ci: float
    ) -> list[tuple]:
        """Estimate, null and paired excess with intervals for each column of
        ``[n_items, columns]`` values, a few columns at a time (the replicates of a
        chunk are ``[n_boot, n_items, chunk]``)."""
        step = max(1, _BOOT_ELEMENTS // max(unit_draws.size, 1))
        out: list[tuple] = []
        for lo in range(0, values.shape[1], step):
            x, base = values[:, lo : lo + step], null[:, lo : lo + step]
            parts = (
                resample.mean_interval(x, ci=ci, unit_draws=unit_draws)
                + resample.mean_interval(base, ci=ci, unit_draws=unit_draws)
                + resample.mean_interval(x, baseline=base, ci=ci, unit_draws=unit_draws)
            )
            out += list(zip(*(np.atleast_1d(a) for a in parts)))
        return out

    def to_frame(self, *, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """One row per (layer, language pair, measure).

        Columns: ``layer``, ``language_a``, ``language_b``, ``pair`` (``"en-fr"``),
        ``measure``, ``value`` (mean over items) with ``ci_low``/``ci_high``, ``null``
        (the shuffled-pair null) with ``null_low``/``null_high``, ``excess`` (value -
        null, paired over items) with ``excess_low``/``excess_high``, and ``n_items``.
        Percentile bootstrap over items
        ([`tl_multilingual.resample`][tl_multilingual.resample]), one draw
        shared by every row.
        """
        unit_draws = resample.draws(self.n_items, n_boot, seed)
        rows = []
        for m, measure in enumerate(MEASURES):
            values, null = self.values[m].numpy(), self.null[m].numpy()  # [item, pair, layer]
            stats = self._rows(
                values.reshape(self.n_items, -1), null.reshape(self.n_items, -1), unit_draws, ci
            )
            for flat, numbers in enumerate(stats):
                p, layer = divmod(flat, self.n_layers)
                a, b = self.pairs[p]
                rows.append((layer, a, b, f"{a}-{b}", measure, *map(float, numbers), self.n_items))
        columns = [
            "layer",
            "language_a",
            "language_b",
            "pair",
            "measure",
            "value",
            "ci_low",
            "ci_high",
            "null",
            "null_low",
            "null_high",
            "excess",
            "excess_low",
            "excess_high",
            "n_items",
        ]
        frame = pd.DataFrame(rows, columns=columns)  # rows in measure order: a stable sort keeps it
        return frame.sort_values(["layer", "pair"], kind="stable").reset_index(drop=True)

    def summary(self, *, ci: float = 0.95, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
        """The mean over language pairs, one row per (layer, measure), with the columns of
        [`to_frame()`][tl_multilingual.stages.similarity.SimilarityResult.to_frame] but no language
        columns and with ``n_pairs``.

        Each item's value is first averaged over the pairs, then bootstrapped over items
        (every pair shares the items, so the pairs are resampled together).
        """
        unit_draws = resample.draws(self.n_items, n_boot, seed)
        rows = []
        for m, measure in enumerate(MEASURES):
            values, null = (
                self.values[m].mean(1).numpy(),
                self.null[m].mean(1).numpy(),
            )  # [item, layer]
            for layer, numbers in enumerate(self._rows(values, null, unit_draws, ci)):
                rows.append((layer, measure, *map(float, numbers), self.n_items, len(self.pairs)))
        columns = [
            "layer",
            "measure",
            "value",
            "ci_low",
            "ci_high",
            "null",
            "null_low",
            "null_high",
            "excess",
            "excess_low",
            "excess_high",
            "n_items",
            "n_pairs",
        ]
        return pd.DataFrame(rows, columns=columns)

    def curves(self, *, excess: bool = False) -> pd.DataFrame:
        """Mean over items and pairs per layer (rows) and measure (columns), and each
        measure's null (``<measure>_null``); with ``excess``, value - null only."""
        mean = self.values.mean(dim=(1, 2)).numpy()  # [measure, layer]
        null = self.null.mean(dim=(1, 2)).numpy()
        if excess:
            frame = pd.DataFrame((mean - null).T, columns=list(MEASURES))
        else:
            frame = pd.DataFrame(mean.T, columns=list(MEASURES))
            for m, measure in enumerate(MEASURES):
                frame[f"{measure}_null"] = null[m]
        frame.index.name = "layer"
        return frame

    def peak(
        self, measure: str = "translation", *, ci: float = 0.95, n_boot: int = 1000, seed: int = 0
    ) -> dict[str, Any]:
        """The layer where the mean over pairs of ``measure`` minus its null is highest,
        and how sure that is.

        Returns:
            ``{"measure", "layer", "excess", "ci_low", "ci_high", "share"}``: the peak
            layer, its excess over the null, the percentile interval of the peak layer
            over bootstrap replicates of the items, and the share of replicates that put
            the peak at ``layer``.
        """
        m = self._measure(measure)
        diff = (self.values[m] - self.null[m]).mean(1).numpy()  # [item, layer]
        curve = diff.mean(0)
        layer = int(np.argmax(curve))
        unit_draws = resample.draws(self.n_items, n_boot, seed)
        step = max(1, _BOOT_ELEMENTS // max(diff.size, 1))
        peaks = np.concatenate(
            [
                np.argmax(diff[unit_draws[lo : lo + step]].mean(1), axis=-1)
                for lo in range(0, n_boot, step)
            ]
        )  # [n_boot]
        low, high = resample.percentile_interval(peaks.astype(float), ci)
        return {
            "measure": measure,
            "layer": layer,
            "excess": float(curve[layer]),
            "ci_low": float(low),
            "ci_high": float(high),
            "share": float(np.mean(peaks == layer)),
        }

    def save(self, path: str | Path) -> Path:
        """Save to the folder ``path`` (safetensors + manifest with the model's provenance
        record)."""
        manifest = {
            "languages": list(self.languages),
            "pairs": [list(p) for p in self.pairs],
            "measures": list(MEASURES),
            "pooling": self.pooling,
            "include_bos": self.include_bos,
            "model": self.model,
            "provenance": self.provenance,
            "corpus": self.corpus,
        }
        tensors = {"values": self.values, "null": self.null, "shuffles": self.shuffles}
        return write_result(path, kind=_KIND, tensors=tensors, manifest=manifest)

    @classmethod
    def load(cls, path: str | Path) -> SimilarityResult:
        """Load a result saved with
        [`save()`][tl_multilingual.stages.similarity.SimilarityResult.save], checking every
        manifest field.

        Raises:
            SaveError: the folder is missing, damaged or edited, or its manifest is
                invalid or disagrees with the tensors.
        """
        tensors, manifest = read_result(path, kind=_KIND)
        where = Path(path) / "manifest.json"
        languages = manifest_field(
            manifest,
            "languages",
            list,
            where=where,
            expect="a list of distinct language codes",
            check=lambda v: (
                len(v) >= 2 and all(isinstance(x, str) and x for x in v) and len(set(v)) == len(v)
            ),
        )
        pairs = manifest_field(
            manifest,
            "pairs",
            list,
            where=where,
            expect="the language pairs, every pair in corpus order",
            check=lambda v: [tuple(p) for p in v] == list(itertools.combinations(languages, 2)),
        )
        manifest_field(
            manifest,
            "measures",
            list,
            where=where,
            expect=f"{list(MEASURES)}",
            check=lambda v: v == list(MEASURES),
        )
        pooling = manifest_field(
            manifest,
            "pooling",
            str,
            where=where,
            expect=f"one of {POOLINGS}",
            check=lambda v: v in POOLINGS,
        )
        include_bos = manifest_field(manifest, "include_bos", bool, where=where)
        model = manifest_field(manifest, "model", (dict, type(None)), where=where, default=None)
        corpus = manifest_field(manifest, "corpus", (dict, type(None)), where=where, default=None)
        values, null, shuffles = (tensors.get(k) for k in ("values", "null", "shuffles"))
        if values is None or null is None or shuffles is None:
            raise SaveError(f"{path}: the tensor file lacks values, null or shuffles")
        if (
            values.ndim != 4
            or values.shape[0] != len(MEASURES)
            or values.shape[2] != len(pairs)
            or null.shape != values.shape
            or shuffles.ndim != 2
            or shuffles.shape[1] != values.shape[1]
        ):
            raise SaveError(
                f"{path}: the tensors do not match the manifest's {len(pairs)} pairs and "
                f"{len(MEASURES)} measures"
            )
        return cls(
            tuple(languages),
            tuple(tuple(p) for p in pairs),
            values,
            null,
            shuffles,
            pooling,
            include_bos,
            model,
            corpus,
        )


# -- the streaming pass --------------------------------------------------------------------


class _Pooler:
    """Reducing hooks: every layer's residual stream pooled over each row's counted
    positions into one float32 vector per text, kept on the device of that layer."""

    def __init__(self, lm: ModelAdapter, n_rows: int) -> None:
        self.lm = lm
        self.n_rows = n_rows
        self.store: dict[int, Tensor] = {}
        self.weights: Tensor | None = None  # [batch, pos]: 1 / count on counted positions
        self.rows: Tensor | None = None  # store rows of the batch's sequences
        self._placed: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def hooks(self) -> list[tuple[str, Any]]:
        return [
            (self.lm.resid_hook(layer), self._reducer(layer)) for layer in range(self.lm.n_layers)
        ]

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._placed:
            self._placed[device] = (
                self.weights.to(device, non_blocking=True),
                self.rows.to(device, non_blocking=True),
            )
        return self._placed[device]

    def _reducer(self, layer: int) -> Any:
        def reduce(tensor: Tensor, hook: Any) -> None:
            weights, rows = self._on(tensor.device)
            pooled = torch.einsum("bp,bpd->bd", weights, tensor.detach().float())
            if layer not in self.store:
                self.store[layer] = torch.zeros(self.n_rows, tensor.shape[-1], device=tensor.device)
            self.store[layer].index_copy_(0, rows, pooled)

        return reduce

    def run(self, batch: Any, counted: Tensor, rows: Sequence[int]) -> None:
        counted = counted.float()
        self.weights = counted / counted.sum(1, keepdim=True)
        self.rows = torch.as_tensor(list(rows), dtype=torch.long)
        self._placed = {}
        self.lm.forward(batch, fwd_hooks=self.hooks(), logits=False, stop_at=self.lm.final_hook)


def _encode(
    lm: ModelAdapter,
    corpus: Corpus,
    pooling: str,
    include_bos: bool,
    max_length: int | None,
    overflow: Overflow,
) -> list[list[Encoded]]:
    """Per language, one sequence per text (in item order), or the library's refusal
    naming the first text with nothing to pool."""
    policy = "all" if pooling == "mean" else "last"
    out = []
    for lang in corpus.languages:
        sequences = encode_language(
            lm,
            lang,
            corpus[lang],
            policy=policy,
            include_bos=include_bos,
            max_length=max_length,
            overflow=overflow,
        )
        found = {seq.text_index for seq in sequences}
        empty = [i for i in range(len(corpus[lang])) if i not in found]
        if empty:
            raise CorpusError(
                f"text {empty[0]} of {lang!r} gives no token to pool (is it empty?)"
                + (f", and {len(empty) - 1} more" if len(empty) > 1 else "")
                + ": remove those items from every language, keeping the corpus parallel"
            )
        out.append(sorted(sequences, key=lambda seq: seq.text_index))
    return out


def _pool(
    lm: ModelAdapter, encoded: list[list[Encoded]], batch_size: int, progress: bool
) -> dict[int, Tensor]:
    """The pooled vectors ``[n_items, n_languages, d_model]`` per layer (float32, on the
    layer's device), this rank's items pooled and every rank's gathered."""
    n_langs, n_items = len(encoded), len(encoded[0])
    sizes = [sum(len(encoded[k][i].ids) for k in range(n_langs)) for i in range(n_items)]
    mine = distributed.shard(n_items, sizes)
    sequences = [
        encoded[k][i] for i in mine for k in range(n_langs)
    ]  # row = local item * n_langs + k
    pooler = _Pooler(lm, len(sequences))
    n_batches = -(-len(sequences) // batch_size)
    bar = tqdm(
        total=n_batches,
        disable=not distributed.show_progress(progress),
        desc="similarity",
        unit="batch",
    )
    with bar:
        for indices, batch in batches(lm, sequences, batch_size):
            pooler.run(batch, counted_mask([sequences[i] for i in indices], batch), indices)
            bar.update()
    out = {}
    for layer in range(lm.n_layers):
        local = pooler.store.get(layer)
        if local is None:  # this rank had no items; the others did
            local = torch.zeros(0, lm.d_model, device=lm.device)
        out[layer] = distributed.gather_rows(
            local.reshape(len(mine), n_langs, local.shape[-1]), mine, n_items
        )
    return out


def _derangements(n: int, n_shuffles: int, seed: int) -> np.ndarray:
    """``n_shuffles`` random permutations of ``range(n)`` without fixed points
    (rejection sampling from uniform permutations: uniform over derangements)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_shuffles, n), dtype=np.int64)
    for s in range(n_shuffles):
        perm = rng.permutation(n)
        while np.any(perm == np.arange(n)):
            perm = rng.permutation(n)
        out[s] = perm
    return out


def _centred(pooled: Tensor) -> Tensor:
    """``[n_items, n_langs, d]`` -> unit vectors after removing each language's mean over
    items (centring in float64; a zero vector stays zero)."""
    x = pooled.double()
    z = x - x.mean(0, keepdim=True)
    return torch.nn.functional.normalize(z, dim=-1).float()


def _measures(cos: Tensor, partner: Tensor) -> Tensor:
    """The three measures per item ``i`` of ``a`` paired with item ``partner[..., i]`` of
    ``b``: ``cos [n, n]``, ``partner [..., n]`` -> ``[3, ..., n]`` float64."""
    n = cos.shape[0]
    cos = cos.double()
    items = torch.arange(n, device=cos.device).expand_as(partner)
    paired = cos[items, partner]
    row_top = cos.topk(2, dim=1).values  # [n, 2]
    col_top = cos.topk(2, dim=0).values  # [2, n]
    found_ab = (paired >= row_top[items, 0]) & (row_top[items, 0] > row_top[items, 1])
    found_ba = (paired >= col_top[0, partner]) & (col_top[0, partner] > col_top[1, partner])
    others = (cos.sum(1)[items] - paired) + (cos.sum(0)[partner] - paired)
    return torch.stack(
        [paired, others / (2 * (n - 1)), (found_ab.double() + found_ba.double()) / 2]
    )


def _statistics(
    pooled: dict[int, Tensor], pairs: list[tuple[int, int]], shuffles: np.ndarray
) -> tuple[Tensor, Tensor]:
    """``values`` and ``null`` ``[3, n_items, n_pairs, n_layers]`` (float64, CPU)."""
    per_layer_values, per_layer_null = [], []
    for layer in sorted(pooled):
        z = _centred(pooled[layer])
        n = z.shape[0]
        identity = torch.arange(n, device=z.device)
        shuffled = torch.as_tensor(shuffles, device=z.device)
        values, null = [], []
        for a, b in pairs:
            cos = z[:, a] @ z[:, b].T
            values.append(_measures(cos, identity))
            null.append(_measures(cos, shuffled).mean(1))
        per_layer_values.append(torch.stack(values, 2))  # [3, n, pair]
        per_layer_null.append(torch.stack(null, 2))
    return (
        torch.stack([v.cpu() for v in per_layer_values], -1),
        torch.stack([v.cpu() for v in per_layer_null], -1),
    )


def representation_similarity(
    model: Any,
    corpus: Corpus,
    *,
    pooling: Pooling = "mean",
    include_bos: bool = False,
    n_shuffles: int = 100,
    seed: int = 0,
    batch_size: int = 16,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    progress: bool = False,
) -> SimilarityResult:
    """Cross-lingual similarity of translations per layer, with a shuffled-pair null
    (Wu et al., 2024; Lim, Aji and Cohn, 2025; Wilie et al., 2025; Liu and Niehues,
    2025): see the module docstring for every definition.

    Args:
        model: a model or [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter].
        corpus: a parallel [`Corpus`][tl_multilingual.inputs.corpus.Corpus]: every language
            holds the same number of texts, text ``i`` of each a translation of the others'
            text ``i``.
        pooling: ``"mean"`` over each text's counted tokens, or its ``"last"`` token.
        include_bos: pool the BOS position too (it is the same in every language, so
            it pulls every pair together; off by default).
        n_shuffles: derangements averaged into the shuffled-pair null.
        seed: seed of the derangements.
        batch_size: texts per forward pass.
        max_length: longest text fed to the model (default: its context size).
        overflow: longer texts keep their beginning (``"truncate"``, with a warning; for
            ``"last"`` pooling the last token kept is read) or are refused (``"error"``).
        progress: show a progress bar.

    Returns:
        A [`SimilarityResult`][tl_multilingual.stages.similarity.SimilarityResult]: per item,
        pair and layer, the measures and their null; ``to_frame()``, ``summary()`` and
        ``peak()`` give means with bootstrap intervals.

    Warns:
        TLMultilingualWarning: fewer than [`MIN_UNITS`][tl_multilingual.resample.MIN_UNITS]
            items (wide, unreliable intervals and a coarse retrieval scale).

    Raises:
        CorpusError: not a parallel corpus (fewer than two languages, languages with
            different numbers of texts, fewer than 3 items), a text with nothing to pool,
            or a bad ``pooling``, ``overflow``, ``batch_size`` or ``n_shuffles``.
    """
    lm = adapt(model)
    if not isinstance(corpus, Corpus):
        raise CorpusError(
            f"representation_similarity needs a Corpus, got {type(corpus).__name__}: build one "
            "with tl_multilingual.Corpus.from_dict({language: [texts]})"
        )
    if len(corpus.languages) < 2:
        raise CorpusError(
            "cross-lingual similarity needs at least two languages; "
            f"the corpus has {corpus.languages}"
        )
    sizes = {lang: len(corpus[lang]) for lang in corpus.languages}
    if not corpus.is_parallel:
        raise CorpusError(
            "representation_similarity needs a parallel corpus (text i of every language a "
            "translation of the "
            f"others' text i), but the languages hold different numbers of texts: {sizes}"
        )
    n_items = next(iter(sizes.values()))
    if n_items < MIN_ITEMS:
        raise CorpusError(
            f"cross-lingual similarity needs at least {MIN_ITEMS} parallel items, got {n_items}"
        )
    if pooling not in POOLINGS:
        raise CorpusError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    check_overflow(overflow, split=False)
    if batch_size < 1:
        raise CorpusError(f"batch_size must be at least 1, got {batch_size}")
    if n_shuffles < 1:
        raise CorpusError(f"n_shuffles must be at least 1, got {n_shuffles}")
    if resample.few_units(n_items):
        warn(
            f"only {n_items} parallel items: bootstrap intervals over so few items are wide and "
            f"unreliable, and retrieval among {n_items} candidates is coarse "
            f"(chance {1 / n_items:.2f}); use at least "
            f"{resample.MIN_UNITS}"
        )
    encoded = _encode(lm, corpus, pooling, include_bos, max_length, overflow)
    pooled = _pool(lm, encoded, batch_size, progress)
    shuffles = _derangements(n_items, n_shuffles, seed)
    index = {lang: k for k, lang in enumerate(corpus.languages)}
    pairs = list(itertools.combinations(corpus.languages, 2))
    values, null = _statistics(pooled, [(index[a], index[b]) for a, b in pairs], shuffles)
    return SimilarityResult(
        tuple(corpus.languages),
        tuple(pairs),
        values,
        null,
        torch.as_tensor(shuffles),
        pooling,
        include_bos,
        model=lm.describe(),
        corpus={
            "fingerprint": corpus.fingerprint(),
            "n_items": n_items,
            "max_length": max_length or lm.n_ctx,
            "overflow": overflow,
            "n_shuffles": n_shuffles,
            "seed": seed,
        },
    )
