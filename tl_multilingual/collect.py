"""Streaming collection of activation statistics: :func:`collect_stats`.

One forward pass per batch; a hook on every layer's read hook reduces the neuron
activations of the counted positions into running int64/float64 totals on the
model's device (each batch's partial sums are taken in float32, then added to the
float64 totals). Whole activations are never cached, padding is never counted, and
the pass stops after the last MLP, so the unembedding is never computed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .adapters import ModelAdapter, adapt
from .corpus import Corpus
from .errors import CorpusError
from .stats import ActivationStats
from .tokens import Overflow, TokenPolicy, batches, encode_language, limit_tokens

__all__ = ["collect_stats"]

_FLOAT32_CHUNK = 1 << 24  # elements converted to float32 at once


class _Totals:
    """Running per-(layer, neuron, language) totals, and the hooks that feed them."""

    def __init__(self, adapter: ModelAdapter, n_languages: int, threshold: float) -> None:
        shape = (adapter.n_layers, adapter.d_mlp, n_languages)
        device = adapter.device
        self.adapter = adapter
        self.threshold = threshold
        self.active = torch.zeros(shape, dtype=torch.long, device=device)
        self.sums = torch.zeros(shape, dtype=torch.float64, device=device)
        self.sum_squares = torch.zeros(shape, dtype=torch.float64, device=device)
        self.tokens = torch.zeros(n_languages, dtype=torch.long)
        self.language = 0
        self.rows: Tensor | None = None  # flat indices of counted positions, None = all
        self.chunk_rows = max(1, _FLOAT32_CHUNK // adapter.d_mlp)

    def hooks(self) -> list[tuple[str, Any]]:
        return [(self.adapter.read_hook(layer), self._reducer(layer)) for layer in range(self.adapter.n_layers)]

    def _reducer(self, layer: int) -> Any:
        def reduce(tensor: Tensor, hook: Any) -> None:
            flat = tensor.reshape(-1, tensor.shape[-1])
            if self.rows is not None:
                flat = flat.index_select(0, self.rows)
            acts = self.adapter.neuron_values(layer, flat)
            k = self.language
            self.active[layer, :, k] += (acts > self.threshold).sum(0, dtype=torch.int32)
            for part in acts.split(self.chunk_rows):  # bounds the float32 copy of half precision
                part = part.float()
                self.sums[layer, :, k] += part.sum(0)
                self.sum_squares[layer, :, k] += (part * part).sum(0)

        return reduce

    def run(self, batch: Any, counted: Tensor) -> None:
        n = int(counted.sum())
        if n == 0:
            return
        self.rows = None if n == counted.numel() else counted.reshape(-1).nonzero().squeeze(1)
        self.adapter.forward(batch, fwd_hooks=self.hooks(), logits=False)
        self.tokens[self.language] += n


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
) -> ActivationStats:
    """Collect per-language activation statistics of every MLP neuron.

    Args:
        model: a :class:`ModelAdapter` or a TransformerLens model (adapted on the fly).
        corpus: texts per language; languages are processed in corpus order.
        batch_size: sequences per forward pass.
        token_policy: ``"all"`` tokens, the ``"last"`` token of each text, or the
            ``"response"`` of prompt/response texts (see :mod:`tl_multilingual.tokens`).
        threshold: a neuron is active on a token when its activation exceeds this.
        include_bos: count the BOS position too (the reference code does).
        max_tokens_per_language: stop each language after this many counted tokens.
        max_length: longest sequence fed to the model (default: its context size).
        overflow: what to do with longer texts: ``"truncate"``, ``"split"`` or ``"error"``.
        progress: show a progress bar.

    Returns:
        :class:`ActivationStats` with counts, sums and sums of squares per layer,
        neuron and language.

    Raises:
        CorpusError: a language has no texts, or its texts give no counted token (all
            empty), or a text cannot be tokenised (the language and the text's index are
            named); bad ``batch_size`` or ``max_tokens_per_language``.
    """
    adapter = adapt(model)
    if not isinstance(corpus, Corpus):
        raise CorpusError(f"collect_stats needs a Corpus, got {type(corpus).__name__}")
    if batch_size < 1:
        raise CorpusError(f"batch_size must be at least 1, got {batch_size}")
    if max_tokens_per_language is not None and max_tokens_per_language < 1:
        raise CorpusError(f"max_tokens_per_language must be positive, got {max_tokens_per_language}")
    empty = [lang for lang in corpus.languages if not corpus[lang]]
    if empty:
        raise CorpusError(f"no texts for {empty}")
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
    totals = _Totals(adapter, len(corpus.languages), threshold)
    n_batches = sum(-(-len(seqs) // batch_size) for seqs in plan.values())
    with tqdm(total=n_batches, disable=not progress, desc="collecting", unit="batch") as bar:
        for k, (lang, sequences) in enumerate(plan.items()):
            totals.language = k
            bar.set_postfix_str(lang)
            for _, batch, counted in batches(adapter, sequences, batch_size):
                totals.run(batch, counted)
                bar.update()
    return ActivationStats(
        corpus.languages,
        totals.tokens,
        totals.active.cpu(),
        sums=totals.sums.cpu(),
        sum_squares=totals.sum_squares.cpu(),
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
