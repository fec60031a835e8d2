"""From texts to padded batches, and which positions count.

A token policy decides which positions of a text are counted in statistics:

- ``"all"``: every token of the text, response included (BOS only with ``include_bos``);
- ``"last"``: the last token of each text;
- ``"response"``: the tokens of the response, for prompt/response texts. The prompt
  and the response are tokenised separately and concatenated, exactly as a
  generated answer follows its prompt, so response-only counts equal
  (prompt + response) counts minus prompt counts.

Counted positions are a contiguous span ``[start, stop)`` of each sequence. Texts
longer than ``max_length`` tokens are truncated or split into several sequences
(each starting with BOS); the policy applies to each resulting sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool
from torch import Tensor

from .adapters import Batch, ModelAdapter
from .corpus import Text
from .errors import CorpusError, warn

__all__ = [
    "TokenPolicy", "Overflow", "Encoded", "encode", "encode_language", "of_language", "require_tokens", "batches",
    "limit_tokens",
]

TokenPolicy = Literal["all", "last", "response"]
Overflow = Literal["truncate", "split", "error"]
POLICIES = ("all", "last", "response")


@dataclass(frozen=True)
class Encoded:
    """Token ids of one sequence, and the span ``[start, stop)`` of counted positions."""

    ids: tuple[int, ...]
    start: int
    stop: int
    text_index: int

    @property
    def n_counted(self) -> int:
        return max(self.stop - self.start, 0)


def _pieces(ids: list[int], first: int, max_length: int, overflow: Overflow) -> list[tuple[list[int], int]]:
    """Cut ``ids`` (whose text starts at position ``first``, after BOS) to ``max_length``.

    Returns pieces, each with the original position of its first text token.
    """
    if len(ids) <= max_length:
        return [(ids, first)]
    if overflow == "truncate":
        return [(ids[:max_length], first)]
    head, body = ids[:first], ids[first:]
    step = max_length - first
    if step <= 0:
        raise CorpusError(f"max_length={max_length} leaves no room for text after the BOS token")
    return [(head + body[i : i + step], first + i) for i in range(0, len(body), step)]


def encode(
    adapter: ModelAdapter,
    texts: Sequence[Text],
    *,
    policy: TokenPolicy = "all",
    include_bos: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> list[Encoded]:
    """Tokenise texts into sequences with their counted span (see the module docstring)."""
    if policy not in POLICIES:
        raise CorpusError(f"unknown token policy {policy!r}; use one of {POLICIES}")
    if overflow not in ("truncate", "split", "error"):
        raise CorpusError(f"overflow must be 'truncate', 'split' or 'error', got {overflow!r}")
    if policy == "response" and any(t.response is None for t in texts):
        raise CorpusError(
            "the 'response' token policy needs prompt/response texts; some texts have no response"
        )
    max_length = max_length or adapter.n_ctx
    first = 1 if adapter.prepend_bos and adapter.bos_token_id is not None else 0
    lo = 0 if include_bos else first  # first counted position
    prompts = adapter.tokenize([t.text for t in texts])
    with_responses = [i for i, t in enumerate(texts) if t.response is not None]
    answers = adapter.tokenize([texts[i].response for i in with_responses], bos=False)
    responses = dict(zip(with_responses, answers))
    out: list[Encoded] = []
    too_long = 0
    for i, prompt in enumerate(prompts):
        ids = prompt + responses.get(i, [])
        answer_from = len(prompt)  # original position of the first response token
        if len(ids) > max_length:
            too_long += 1
            if overflow == "error":
                raise CorpusError(f"text {i} has {len(ids)} tokens, more than max_length={max_length}")
        for piece, offset in _pieces(ids, first, max_length, overflow):
            if policy == "all":
                start = lo
            elif policy == "last":
                start = max(len(piece) - 1, lo)
            else:  # the response, in this piece's positions
                start = max(answer_from - offset + first, first)
            if start < len(piece):
                out.append(Encoded(tuple(piece), start, len(piece), i))
    if too_long and overflow != "error":
        action = "truncated to" if overflow == "truncate" else "split into pieces of"
        warn(
            f"{too_long} of {len(texts)} texts are longer than {max_length} tokens and were {action} "
            f"{max_length} tokens"
        )
    return out


@contextmanager
def of_language(language: str) -> Iterator[None]:
    """Name ``language`` in the error of a text that cannot be tokenised inside the block
    (:meth:`ModelAdapter.tokenize` names the text's index)."""
    try:
        yield
    except CorpusError as err:
        index = getattr(err, "index", None)
        if index is None or getattr(err, "language", None) is not None:
            raise
        error = CorpusError(f"language {language!r}, {err}")
        error.index, error.language = index, language
        raise error from err


def require_tokens(language: str, count: int, what: str = "countable tokens") -> None:
    """Refuse a language whose texts give no ``what`` (all empty, or too short)."""
    if count <= 0:
        raise CorpusError(
            f"the texts of {language!r} give no {what} (are they all empty?): give it non-empty texts or leave it out"
        )


def encode_language(adapter: ModelAdapter, language: str, texts: Sequence[Text], **options) -> list[Encoded]:
    """:func:`encode` the texts of one language: tokenizer failures name the language and
    the text, and a language with no counted token is refused.

    Raises:
        CorpusError: a text cannot be tokenised, or no position of any text is counted.
    """
    if not texts:
        raise CorpusError(f"no texts for {language!r}")
    with of_language(language):
        sequences = encode(adapter, texts, **options)
    require_tokens(language, sum(seq.n_counted for seq in sequences))
    return sequences


def limit_tokens(sequences: Sequence[Encoded], budget: int | None) -> list[Encoded]:
    """Keep sequences in order until ``budget`` counted tokens; the sequence that reaches
    the budget is cut so that exactly ``budget`` positions are counted."""
    if budget is None:
        return list(sequences)
    kept, used = [], 0
    for seq in sequences:
        if used >= budget:
            break
        take = min(seq.n_counted, budget - used)
        stop = seq.start + take
        kept.append(Encoded(seq.ids[:stop], seq.start, stop, seq.text_index))
        used += take
    return kept


def counted_mask(sequences: Sequence[Encoded], batch: Batch) -> Bool[Tensor, "batch pos"]:
    """Counted positions of a padded batch."""
    width = batch.input_ids.shape[1]
    pos = torch.arange(width, device=batch.input_ids.device)
    lengths = torch.tensor([len(s.ids) for s in sequences], device=pos.device)
    shift = (width - lengths) if batch.padding_side == "left" else torch.zeros_like(lengths)
    start = torch.tensor([s.start for s in sequences], device=pos.device) + shift
    stop = torch.tensor([s.stop for s in sequences], device=pos.device) + shift
    return (pos >= start[:, None]) & (pos < stop[:, None])


def batches(
    adapter: ModelAdapter, sequences: Sequence[Encoded], batch_size: int
) -> Iterator[tuple[list[int], Batch, Bool[Tensor, "batch pos"]]]:
    """Padded batches of ``batch_size`` sequences, longest first to pad little: the
    indices of the sequences in each batch, the batch, and its counted positions."""
    if batch_size < 1:
        raise CorpusError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].ids))
    for lo in range(0, len(order), batch_size):
        indices = order[lo : lo + batch_size]
        chunk = [sequences[i] for i in indices]
        batch = adapter.pad([s.ids for s in chunk])
        yield indices, batch, counted_mask(chunk, batch)
