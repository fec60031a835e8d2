"""Streaming collection of activation statistics: [`collect_stats()`][tl_multilingual.neurons.collect.collect_stats].

One forward pass per batch; a hook on every layer's read hook reduces the neuron
activations of the counted positions into running int64/float64 totals on the
device of that layer (each batch's partial sums are taken in float32, then added to
the float64 totals). Whole activations are never cached, padding is never counted,
and the pass stops after the last MLP, so the unembedding is never computed. Under
``torch.distributed`` each rank reads its share of the texts and the totals are
summed over ranks (see [`tl_multilingual.distributed`][tl_multilingual.distributed]).

With ``checkpoint=PATH`` the running totals are saved every ``checkpoint_every``
batches (atomically, with the number of batches done and a key of everything that
decides them: corpus fingerprint, model and weights, settings); a rerun with the same
inputs continues after the last saved batch and gives the same totals, bit for bit.
Under ``torch.distributed`` each rank keeps its own totals in ``PATH/rank-R-of-W``; a
rerun with the same number of processes continues each rank from its own.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..errors import CorpusError, SaveError, warn
from ..inputs.corpus import Corpus
from ..model.adapters import ModelAdapter, adapt
from ..model.tokens import Encoded, Overflow, TokenPolicy, batches, encode_language, limit_tokens
from ..persist import read_result, write_result
from .stats import ActivationStats

__all__ = ["collect_stats", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "tl_multilingual.CollectionCheckpoint"

_FLOAT32_CHUNK = 1 << 24  # elements converted to float32 at once


class _Totals:
    """Running per-(layer, neuron, language) totals, and the hooks that feed them.

    Each layer's totals live on the device of the activations its hook sees (a model
    split across devices keeps every layer's totals beside the layer), as do the
    indices of the counted positions; nothing waits for the device inside the loop.
    """

    def __init__(self, adapter: ModelAdapter, n_languages: int, threshold: float) -> None:
        self.adapter = adapter
        self.threshold = threshold
        self.n_languages = n_languages
        self.layers: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # active, sums, sum_squares
        self.tokens = torch.zeros(n_languages, dtype=torch.long)
        self.language = 0
        self.rows: Tensor | None = None  # flat indices of counted positions (CPU), None = all
        self._placed: dict[torch.device, Tensor] = {}
        self.chunk_rows = max(1, _FLOAT32_CHUNK // adapter.d_mlp)
        self.restored: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.adapter.read_hook(layer), self._reducer(layer)) for layer in range(self.adapter.n_layers)]

    def _totals(self, layer: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if layer not in self.layers and layer in self.restored:
            self.layers[layer] = tuple(t.to(device) for t in self.restored.pop(layer))  # type: ignore[assignment]
        if layer not in self.layers:
            shape = (self.adapter.d_mlp, self.n_languages)
            self.layers[layer] = (
                torch.zeros(shape, dtype=torch.long, device=device),
                torch.zeros(shape, dtype=torch.float64, device=device),
                torch.zeros(shape, dtype=torch.float64, device=device),
            )
        return self.layers[layer]

    def _rows_on(self, device: torch.device) -> Tensor:
        if device not in self._placed:
            self._placed[device] = self.rows.to(device, non_blocking=True)
        return self._placed[device]

    def _reducer(self, layer: int) -> Any:
        def reduce(tensor: Tensor, hook: Any) -> None:
            flat = tensor.reshape(-1, tensor.shape[-1])
            if self.rows is not None:
                flat = flat.index_select(0, self._rows_on(flat.device))
            acts = self.adapter.neuron_values(layer, flat)
            active, sums, squares = self._totals(layer, acts.device)
            k = self.language
            active[:, k] += (acts > self.threshold).sum(0, dtype=torch.int32)
            for part in acts.split(self.chunk_rows):  # bounds the float32 copy of half precision
                part = part.float()
                sums[:, k] += part.sum(0)
                squares[:, k] += (part * part).sum(0)

        return reduce

    def run(self, sequences: list[Encoded], batch: Any) -> None:
        rows, n = _counted_rows(sequences, batch)
        if n == 0:
            return
        self.rows, self._placed = rows, {}
        self.adapter.forward(batch, fwd_hooks=self.hooks(), logits=False)
        self.tokens[self.language] += n

    def snapshot(self) -> dict[str, Tensor]:
        """This process's running totals on the CPU (not summed over ranks)."""
        parts = [self.layers.get(layer) or self.restored.get(layer) for layer in range(self.adapter.n_layers)]
        shape = (self.adapter.d_mlp, self.n_languages)
        zeros = (torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.float64),
                 torch.zeros(shape, dtype=torch.float64))
        stacked = [torch.stack([(p or zeros)[i].cpu() for p in parts]) for i in range(3)]
        return {"active": stacked[0], "sums": stacked[1], "sum_squares": stacked[2],
                "tokens": self.tokens.clone()}

    def restore(self, tensors: dict[str, Tensor]) -> None:
        """Continue from a `snapshot()`."""
        self.tokens = tensors["tokens"].clone()
        self.layers, self.restored = {}, {
            layer: (tensors["active"][layer], tensors["sums"][layer], tensors["sum_squares"][layer])
            for layer in range(self.adapter.n_layers)
        }

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        """Active counts, sums and sums of squares ``[n_layers, d_mlp, n_languages]`` on
        the CPU, summed over ranks."""
        parts = [self._totals(layer, torch.device("cpu")) for layer in range(self.adapter.n_layers)]
        stacked = [torch.stack([p[i].cpu() for p in parts]) for i in range(3)]
        return tuple(distributed.all_reduce_sum(t) for t in stacked)  # type: ignore[return-value]


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _resume(folder: Path, inputs: str, totals: _Totals) -> int:
    """Restore ``totals`` from the checkpoint in ``folder`` if it was saved for the same
    inputs; returns the number of batches it holds (0: start from the beginning)."""
    if not folder.exists():
        return 0
    try:
        tensors, manifest = read_result(folder, kind=CHECKPOINT_KIND)
        if manifest.get("inputs") != inputs:
            warn(f"the checkpoint {folder} was saved for other inputs (corpus, model or settings); "
                 "collecting from the first batch")
            return 0
        done = manifest.get("batches_done")
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise SaveError(f"{folder}: batches_done must be a count of batches, got {done!r:.40}")
        expected = (totals.adapter.n_layers, totals.adapter.d_mlp, totals.n_languages)
        if any(tuple(tensors[name].shape) != expected for name in ("active", "sums", "sum_squares")):
            raise SaveError(f"{folder}: the totals are not {list(expected)}")
        totals.restore(tensors)
    except (SaveError, KeyError) as err:
        warn(f"the checkpoint {folder} cannot be used ({err}); collecting from the first batch")
        return 0
    return done


def _counted_rows(sequences: list[Encoded], batch: Any) -> tuple[Tensor | None, int]:
    """Flat indices of the counted positions of a padded batch (None: every position)
    and their number, from the sequences alone: no device round trip."""
    width = batch.input_ids.shape[1]
    spans = []
    for row, seq in enumerate(sequences):
        shift = width - len(seq.ids) if batch.padding_side == "left" else 0
        lo = row * width + seq.start + shift
        spans.append((lo, lo + seq.n_counted))
    n = sum(hi - lo for lo, hi in spans)
    if n == width * len(sequences):
        return None, n
    return torch.cat([torch.arange(lo, hi) for lo, hi in spans]), n


def collect_stats(
    model: Any,
    corpus: Corpus,
    *,
    batch_size: int = 16,
    token_policy: TokenPolicy = "all",
    threshold: float = 0.0,
    include_bos: bool = False,
    max_tokens_per_language: int | None = None,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 50,
) -> ActivationStats:
    """Collect per-language activation statistics of every MLP neuron.

    Args:
        model: a [`ModelAdapter`][tl_multilingual.model.adapters.ModelAdapter] or a TransformerLens model (adapted on the fly).
        corpus: texts per language; languages are processed in corpus order.
        batch_size: sequences per forward pass.
        token_policy: ``"all"`` tokens, the ``"last"`` token of each text, or the
            ``"response"`` of prompt/response texts (see [`tl_multilingual.model.tokens`][tl_multilingual.model.tokens]).
        threshold: a neuron is active on a token when its activation exceeds this.
        include_bos: count the BOS position too (the reference code does).
        max_tokens_per_language: stop each language after this many counted tokens.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: what to do with longer texts: ``"truncate"``, ``"split"`` or ``"error"``.
        progress: show a progress bar.
        checkpoint: a folder where the running totals are saved every
            ``checkpoint_every`` batches, and from which a rerun with the same corpus,
            model (and weights) and settings continues (bit for bit the same result); it
            is removed when the collection finishes. A checkpoint of other inputs, or
            a damaged one, is ignored with a warning. When the work is split across
            processes (``torch.distributed``), each rank saves its own totals in
            ``checkpoint/rank-R-of-W``, and a rerun on as many processes resumes them.
        checkpoint_every: batches between two saves of the checkpoint.

    Returns:
        [`ActivationStats`][tl_multilingual.neurons.stats.ActivationStats] with counts, sums and sums of squares per layer,
        neuron and language.

    Raises:
        CorpusError: a language has no texts, or its texts give no counted token (all
            empty), or a text cannot be tokenised (the language and the text's index are
            named); bad ``batch_size``, ``max_tokens_per_language`` or
            ``checkpoint_every``.
        SaveError: the checkpoint cannot be written.
    """
    adapter = adapt(model)
    if not isinstance(corpus, Corpus):
        raise CorpusError(
            f"collect_stats needs a Corpus, got {type(corpus).__name__}: build one with "
            "tl_multilingual.Corpus.from_dict({language: [texts]})"
        )
    if batch_size < 1:
        raise CorpusError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens_per_language is not None and max_tokens_per_language < 1:
        raise CorpusError(f"max_tokens_per_language must be positive, got {max_tokens_per_language}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise CorpusError(f"checkpoint_every must be a positive number of batches, got {checkpoint_every!r}")
    empty = [lang for lang in corpus.languages if not corpus[lang]]
    if empty:
        raise CorpusError(f"no texts for {empty}: give each language texts or leave it out")
    plan = {
        lang: limit_tokens(
            encode_language(
                adapter,
                lang,
                corpus[lang],
                policy=token_policy,
                include_bos=include_bos,
                max_length=max_length,
                overflow=overflow,
            ),
            max_tokens_per_language,
        )
        for lang in corpus.languages
    }
    # Every rank takes its share of each language's sequences (after the token budget,
    # which applies to the whole corpus); the totals are summed over ranks at the end.
    plan = {lang: [seqs[i] for i in distributed.shard(len(seqs), [len(s.ids) for s in seqs])]
            for lang, seqs in plan.items()}
    totals = _Totals(adapter, len(corpus.languages), threshold)
    n_batches = sum(-(-len(seqs) // batch_size) for seqs in plan.values())
    folder = None if checkpoint is None else Path(checkpoint)
    if folder is not None and distributed.active():  # each rank's own share of the batches
        folder = folder / f"rank-{distributed.rank()}-of-{distributed.world_size()}"
    inputs = _key({"rank": distributed.rank(), "world_size": distributed.world_size(),"corpus": corpus.fingerprint(), "model": adapter.describe(), "batch_size": batch_size,
                   "token_policy": token_policy, "threshold": threshold, "include_bos": include_bos,
                   "max_tokens_per_language": max_tokens_per_language, "max_length": max_length,
                   "overflow": overflow, "batches": n_batches})
    done = _resume(folder, inputs, totals) if folder is not None else 0
    position = 0
    with tqdm(total=n_batches, disable=not distributed.show_progress(progress), desc="collecting", unit="batch") as bar:
        bar.update(done)
        for k, (lang, sequences) in enumerate(plan.items()):
            totals.language = k
            bar.set_postfix_str(lang)
            n_lang = -(-len(sequences) // batch_size)
            if position + n_lang <= done:  # every batch of this language is in the checkpoint
                position += n_lang
                continue
            for indices, batch in batches(adapter, sequences, batch_size):
                position += 1
                if position <= done:
                    continue
                totals.run([sequences[i] for i in indices], batch)
                bar.update()
                if folder is not None and position % checkpoint_every == 0 and position < n_batches:
                    write_result(folder, kind=CHECKPOINT_KIND, tensors=totals.snapshot(),
                                 manifest={"inputs": inputs, "batches_done": position, "batches": n_batches})
    active, sums, sum_squares = totals.result()  # every rank has finished its batches
    if checkpoint is not None and distributed.is_main():
        shutil.rmtree(checkpoint, ignore_errors=True)
    return ActivationStats(
        corpus.languages,
        distributed.all_reduce_sum(totals.tokens),
        active,
        sums=sums,
        sum_squares=sum_squares,
        threshold=threshold,
        token_policy=token_policy,
        include_bos=include_bos,
        model=adapter.describe(),
        corpus={
            "fingerprint": corpus.fingerprint(),
            "texts": {lang: len(corpus[lang]) for lang in corpus.languages},
            "max_tokens_per_language": max_tokens_per_language,
            "max_length": max_length or adapter.n_ctx,
            "overflow": overflow,
        },
    )
