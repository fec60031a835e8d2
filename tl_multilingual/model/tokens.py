"""From texts to padded batches: answers tokenised in context, one length policy, and
which positions count.

**Answers in context.** A response, an answer option or a gold answer is tokenised
together with its prompt: the ids of the one string ``prompt + answer``, of which the
answer's tokens are those after the prompt's own ids (the standard log-likelihood
recipe, `in_context()`). Tokenised alone, an answer can get tokens the model never
reads after its prompt: a SentencePiece tokenizer that adds a prefix space (Llama 2,
Mistral v0.1) makes ``" True"`` into ``"▁", "▁True"``, where the model reads
``"▁True"`` after ``"Answer:"``. A prompt's trailing whitespace that the answer's first
token absorbs (``"Answer: " + "True"`` reads ``"▁True"``) goes to the answer, and the
prompt is fed without it. Scores are therefore log-likelihoods of the joint text, and a
gold token is the one the model has to predict after the prompt as it is fed.

**The length policy.** Every call that feeds text to the model takes ``max_length``
(default: the model's context, ``n_ctx``) and ``overflow``:

- ``"truncate"`` (default): longer token sequences are cut to ``max_length``, with a
  [`TruncationWarning`][tl_multilingual.errors.TruncationWarning] naming the limit. Calls that read
  every token (statistics, perplexity) keep the beginning; calls that read the last
  position, score answers or generate keep the end (the oldest prompt tokens go, BOS
  stays first, an answer being scored is never cut);
- ``"split"`` (statistics and perplexity only): pieces of ``max_length`` tokens, each
  starting with BOS;
- ``"error"``: a [`ContextLengthError`][tl_multilingual.errors.ContextLengthError] naming the limit.

**Token policies.** A token policy decides which positions of a text are counted in
statistics:

- ``"all"``: every token of the text, response included (BOS only with
  ``include_bos``);
- ``"last"``: the last token of each text;
- ``"response"``: the tokens of the response, for prompt/response texts, taken in
  context as above. Where the prompt's own tokens are a prefix of the joint tokens
  (unless a token straddles the boundary), response-only counts equal (prompt +
  response) counts minus prompt counts.

Counted positions are a contiguous span ``[start, stop)`` of each sequence; the policy
applies to each sequence after truncation or splitting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool
from torch import Tensor

from ..errors import ContextLengthError, CorpusError, TruncationWarning, warn
from ..inputs.corpus import Text
from .adapters import Batch, ModelAdapter

__all__ = [
    "TokenPolicy", "Overflow", "Encoded", "encode", "encode_language", "of_language", "require_tokens",
    "encode_answers", "in_context", "fit", "context_limit", "check_overflow", "report_overflow", "batches",
    "limit_tokens",
]

TokenPolicy = Literal["all", "last", "response"]
Overflow = Literal["truncate", "split", "error"]
POLICIES = ("all", "last", "response")
OVERFLOWS = ("truncate", "split", "error")


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


# -- answers in context ------------------------------------------------------------------


def in_context(adapter: ModelAdapter, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], int]]:
    """Each ``prompt + answer`` tokenised as one text (with BOS as the adapter adds it),
    and the position ``start`` where the answer's tokens begin (see the module docstring).

    ``ids[:start]`` is the prompt as the model reads it before the answer, and
    ``ids[start]`` (when ``start < len(ids)``) the answer's first token. ``start`` is the
    length of the prompt's own ids when they are a prefix of the joint ids (the usual
    case); else, when the prompt ends in whitespace that the answer's first token
    absorbs, the length of the ids of the prompt without it (the whitespace goes to
    the answer, as in the standard recipe); else the longest common prefix."""
    if len(prompts) != len(answers):
        raise CorpusError(f"{len(prompts)} prompts but {len(answers)} answers")
    alone = adapter.tokenize(list(prompts))
    joint = adapter.tokenize([p + a for p, a in zip(prompts, answers)])
    starts = [len(p) if ids[: len(p)] == p else None for p, ids in zip(alone, joint)]
    trailing = [i for i, s in enumerate(starts) if s is None and prompts[i] != prompts[i].rstrip()]
    for i, ids in zip(trailing, adapter.tokenize([prompts[i].rstrip() for i in trailing])):
        if joint[i][: len(ids)] == ids:
            starts[i] = len(ids)
    out = []
    for prompt, ids, start in zip(alone, joint, starts):
        if start is None:
            start, n = 0, min(len(prompt), len(ids))
            while start < n and prompt[start] == ids[start]:
                start += 1
        out.append((ids, start))
    return out


def encode_answers(
    adapter: ModelAdapter,
    prompts: Sequence[str],
    answers: Sequence[str],
    *,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    what: str = "answer",
) -> list[Encoded]:
    """Sequences whose counted span is each answer, tokenised in context (for scoring:
    the summed log-probability of the span is the joint text's log-likelihood of the
    answer). Too long sequences lose their oldest prompt tokens, never the answer.

    Raises:
        CorpusError: an answer has no token of its own.
        ContextLengthError: ``overflow="error"`` and a sequence is too long, or an
            answer leaves no room for any of its prompt.
    """
    pairs = in_context(adapter, prompts, answers)
    for i, (ids, start) in enumerate(pairs):
        if start >= len(ids):
            raise CorpusError(
                f"{what} {answers[i]!r} adds no token of its own after its prompt {_short(prompts[i])}; "
                f"every {what} needs a token"
            )
    cut, dropped = fit(
        adapter, [ids for ids, _ in pairs], max_length=max_length, overflow=overflow,
        keep=[start - 1 for _, start in pairs], what=f"{what} text",
    )
    return [Encoded(tuple(ids), start - lost, len(ids), i) for i, (ids, (_, start), lost) in enumerate(zip(cut, pairs, dropped))]


def _short(text: str, width: int = 40) -> str:
    return repr(text if len(text) <= width else "..." + text[-width:])


# -- the length policy -------------------------------------------------------------------


def context_limit(adapter: ModelAdapter, max_length: int | None = None) -> int:
    """The longest token sequence fed to the model: ``max_length``, or the model's context."""
    limit = adapter.n_ctx if max_length is None else int(max_length)
    if limit <= _bos(adapter):
        raise CorpusError(f"max_length={max_length} leaves no room for text after the BOS token")
    return limit


def check_overflow(overflow: str, *, split: bool = True) -> None:
    """Refuse an unknown ``overflow`` (and ``"split"`` where a call cannot split)."""
    if overflow not in OVERFLOWS:
        raise CorpusError(f"overflow must be 'truncate', 'split' or 'error', got {overflow!r}")
    if overflow == "split" and not split:
        raise CorpusError(
            "overflow='split' applies only to per-token statistics and perplexity; calls that read "
            "the last position, score answers or generate take 'truncate' or 'error'"
        )


def fit(
    adapter: ModelAdapter,
    sequences: Sequence[Sequence[int]],
    *,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    keep: Sequence[int] | None = None,
    what: str = "prompt",
    report: bool = True,
) -> tuple[list[list[int]], list[int]]:
    """Fit token sequences to the limit by keeping their end (BOS stays first): for
    calls that read the last position, score answers or generate.

    Returns the sequences and how many tokens each lost (positions shift by as much).
    ``keep[i]``: the first position of sequence ``i`` that must survive (e.g. the one
    that predicts an answer's first token). With ``report``, the policy's warning or
    error is given here; otherwise the caller reports (see `report_overflow()`).
    """
    check_overflow(overflow, split=False)
    limit = context_limit(adapter, max_length)
    first = _bos(adapter)
    out, dropped, long = [], [], []
    for i, seq in enumerate(sequences):
        seq = list(seq)
        lost = max(len(seq) - limit, 0)
        if lost:
            long.append((i, len(seq)))
            if keep is not None and keep[i] - lost < first:
                raise ContextLengthError(
                    f"{what} {i} has {len(seq)} tokens; max_length={limit} ({_source(adapter, max_length)}) "
                    f"leaves no room for the {len(seq) - keep[i]} tokens that must be kept"
                )
            if overflow == "truncate":
                seq = seq[:first] + seq[first + lost :]
        out.append(seq)
        dropped.append(lost if overflow == "truncate" else 0)
    if report:
        report_overflow(adapter, long, len(sequences), max_length=max_length, overflow=overflow,
                        action="truncated to the last", what=what)
    return out, dropped


def report_overflow(
    adapter: ModelAdapter,
    long: Sequence[tuple[int, int]],
    total: int,
    *,
    max_length: int | None,
    overflow: Overflow,
    action: str,
    what: str = "text",
) -> None:
    """The policy's one voice: a [`TruncationWarning`][tl_multilingual.errors.TruncationWarning], or with ``overflow="error"``
    a [`ContextLengthError`][tl_multilingual.errors.ContextLengthError], for the ``(index, n_tokens)`` sequences in ``long``."""
    if not long:
        return
    limit = context_limit(adapter, max_length)
    source = _source(adapter, max_length)
    if overflow == "error":
        index, n = long[0]
        raise ContextLengthError(
            f"{what} {index} has {n} tokens, more than max_length={limit} ({source}); pass "
            "overflow='truncate' to cut it (or a larger max_length if the model allows)"
        )
    plural = what if total == 1 else f"{what}s"
    warn(f"{len(long)} of {total} {plural} longer than max_length={limit} tokens ({source}) "
         f"{'was' if len(long) == 1 else 'were'} {action} {limit} tokens", TruncationWarning)


def _source(adapter: ModelAdapter, max_length: int | None) -> str:
    return f"the model's context n_ctx={adapter.n_ctx}" if max_length is None else f"the model's n_ctx is {adapter.n_ctx}"


def _bos(adapter: ModelAdapter) -> int:
    return 1 if adapter.prepend_bos and adapter.bos_token_id is not None else 0


def _pieces(ids: list[int], first: int, max_length: int, overflow: Overflow) -> list[tuple[list[int], int]]:
    """Cut ``ids`` (whose text starts at position ``first``, after BOS) to ``max_length``,
    keeping the beginning.

    Returns pieces, each with the original position of its first text token.
    """
    if len(ids) <= max_length:
        return [(ids, first)]
    if overflow == "truncate":
        return [(ids[:max_length], first)]
    head, body = ids[:first], ids[first:]
    step = max_length - first
    return [(head + body[i : i + step], first + i) for i in range(0, len(body), step)]


# -- statistics and perplexity -----------------------------------------------------------


def encode(
    adapter: ModelAdapter,
    texts: Sequence[Text],
    *,
    policy: TokenPolicy = "all",
    include_bos: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> list[Encoded]:
    """Tokenise texts into sequences with their counted span (see the module docstring).
    Too long texts keep their beginning, or are split."""
    if policy not in POLICIES:
        raise CorpusError(f"unknown token policy {policy!r}; use one of {POLICIES}")
    check_overflow(overflow)
    if policy == "response" and any(t.response is None for t in texts):
        raise CorpusError(
            "the 'response' token policy needs prompt/response texts; some texts have no response"
        )
    limit = context_limit(adapter, max_length)
    first = _bos(adapter)
    lo = 0 if include_bos else first  # first counted position
    tokens: list[tuple[list[int], int]] = [([], 0)] * len(texts)
    plain = [i for i, t in enumerate(texts) if t.response is None]
    for i, ids in zip(plain, adapter.tokenize([texts[i].text for i in plain])):
        tokens[i] = (ids, len(ids))
    paired = [i for i, t in enumerate(texts) if t.response is not None]
    joint = in_context(adapter, [texts[i].text for i in paired], [texts[i].response for i in paired])
    for i, pair in zip(paired, joint):
        tokens[i] = pair
    out: list[Encoded] = []
    long = [(i, len(ids)) for i, (ids, _) in enumerate(tokens) if len(ids) > limit]
    action = "truncated to the first" if overflow == "truncate" else "split into pieces of"
    report_overflow(adapter, long, len(texts), max_length=max_length, overflow=overflow, action=action)
    for i, (ids, answer_from) in enumerate(tokens):  # answer_from: original position of the response
        for piece, offset in _pieces(ids, first, limit, overflow):
            if policy == "all":
                start = lo
            elif policy == "last":
                start = max(len(piece) - 1, lo)
            else:  # the response, in this piece's positions
                start = max(answer_from - offset + first, first)
            if start < len(piece):
                out.append(Encoded(tuple(piece), start, len(piece), i))
    return out


@contextmanager
def of_language(language: str) -> Iterator[None]:
    """Name ``language`` in the error of a text that cannot be tokenised inside the block
    ([`ModelAdapter.tokenize()`][tl_multilingual.model.adapters.ModelAdapter.tokenize] names the text's index)."""
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
    """`encode()` the texts of one language: tokenizer failures name the language and
    the text, and a language with no counted token is refused.

    Raises:
        CorpusError: a text cannot be tokenised, or no position of any text is counted.
    """
    if not texts:
        raise CorpusError(f"no texts for {language!r}: give it texts or leave the language out")
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
) -> Iterator[tuple[list[int], Batch]]:
    """Padded batches of ``batch_size`` sequences, longest first to pad little: the
    indices of the sequences in each batch, and the batch (its counted positions:
    ``counted_mask([sequences[i] for i in indices], batch)``).

    Raises:
        CorpusError: ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise CorpusError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].ids))
    for lo in range(0, len(order), batch_size):
        indices = order[lo : lo + batch_size]
        yield indices, adapter.pad([sequences[i].ids for i in indices])
