"""Evaluation of a model, with or without interventions: perplexity, multiple-choice
log-likelihood accuracy, and accuracy of generated answers.

Run any of them inside an intervention context (``with tlm.ablate(...):``) to
measure its effect. Each metric is computed from per-unit (text or item) scores, so
experiments can resample units for bootstrap intervals:

- perplexity: ``exp(sum of token NLL / number of tokens)`` per language, pooled over
  texts; the first token (BOS, or the first text token, which nothing predicts) and
  padding never count;
- choice accuracy: an item is right when its gold option has the highest
  log-likelihood given the prompt (summed over the option's tokens, or averaged with
  ``length_normalize``); options are tokenised in context (`in_context()`),
  so a score is the log-likelihood of the option within the joint text;
- answer accuracy: greedy decoding, then a user-supplied checker on the continuation
  decoded in context.

Every function takes the library's length policy (``max_length``, ``overflow``; see
[`tokens`][tl_multilingual.model.tokens]).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch

from .. import distributed
from ..errors import ContextLengthError, CorpusError
from ..inputs.corpus import Corpus, Text
from ..inputs.languages import normalize_language
from ..model.adapters import ModelAdapter, adapt
from ..model.readout import last_logits, sequence_nll, sequence_scores
from ..model.tokens import (
    Encoded,
    Overflow,
    TokenPolicy,
    check_overflow,
    context_limit,
    encode,
    encode_answers,
    encode_language,
    fit,
    of_language,
    report_overflow,
    require_tokens,
)

__all__ = [
    "perplexity",
    "text_nll",
    "MultipleChoice",
    "choice_accuracy",
    "answer_accuracy",
    "generate",
    "option_logprobs",
    "continuation_logprobs",
    "rolling_logprobs",
]


def _predicted(sequences: Sequence[Encoded]) -> list[Encoded]:
    """The sequences' counted spans less what nothing predicts (a sequence's first
    position), and the sequences left with nothing to score dropped."""
    return [replace(seq, start=max(seq.start, 1)) for seq in sequences if seq.stop > max(seq.start, 1)]

def text_nll(
    model: Any,
    corpus: Corpus,
    *,
    token_policy: TokenPolicy = "all",
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    compute_dtype: torch.dtype | None = None,
    head_dtype: torch.dtype | None = None,
) -> pd.DataFrame:
    """Per-text negative log-likelihood: one row per text with ``language``, ``text``
    (index), ``tokens`` (predicted tokens counted) and ``nll`` (their summed NLL).
    Texts of all languages share batches. Texts longer than ``max_length`` (default:
    the model's context) keep their beginning, are split into pieces each starting
    with BOS (``overflow="split"``), or are refused (``"error"``). ``compute_dtype``
    (``torch.bfloat16`` or ``torch.float16``) runs the matrix multiplications of the
    model body in that dtype, and ``head_dtype`` those of the unembedding, each with
    weights cast once per call (the body under autocast on a GPU), keeping the norms
    and the loss in the model's dtype and float32: see
    [`sequence_scores()`][tl_multilingual.model.readout.sequence_scores], and
    docs/scaling.md for their measured effect."""
    lm = adapt(model)
    owners, sequences = [], []
    for lang in corpus.languages:
        encoded = encode_language(lm, lang, corpus[lang], policy=token_policy, max_length=max_length,
                                  overflow=overflow)
        predicted = _predicted(encoded)  # nothing predicts the first position
        require_tokens(lang, sum(seq.n_counted for seq in predicted), "predicted tokens")
        owners += [(lang, seq.text_index) for seq in predicted]
        sequences += predicted
    sums, counts = sequence_nll(lm, sequences, batch_size, compute_dtype=compute_dtype,
                                head_dtype=head_dtype)
    totals: dict[tuple[str, int], list[float]] = {}
    for owner, total, n in zip(owners, sums, counts):
        acc = totals.setdefault(owner, [0.0, 0])
        acc[0] += total
        acc[1] += n
    rows = []
    for lang in corpus.languages:
        for index in range(len(corpus[lang])):
            total, n = totals.get((lang, index), [0.0, 0])
            rows.append({"language": lang, "text": index, "tokens": int(n), "nll": total})
    return pd.DataFrame(rows, columns=["language", "text", "tokens", "nll"])


def perplexity(
    model: Any,
    corpus: Corpus,
    *,
    token_policy: TokenPolicy = "all",
    per_text: bool = False,
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
    compute_dtype: torch.dtype | None = None,
    head_dtype: torch.dtype | None = None,
) -> pd.DataFrame:
    """Perplexity per language (``exp`` of the mean token NLL, pooled over texts), or per
    text with ``per_text``. Use ``token_policy="response"`` to score only responses
    (tokenised in context). ``max_length``, ``overflow``, ``compute_dtype`` and ``head_dtype`` as in
    [`text_nll()`][tl_multilingual.causal.evaluate.text_nll]."""
    frame = text_nll(model, corpus, token_policy=token_policy, batch_size=batch_size, max_length=max_length,
                     overflow=overflow, compute_dtype=compute_dtype, head_dtype=head_dtype)
    if per_text:
        frame = frame.copy()
        frame["perplexity"] = (frame["nll"] / frame["tokens"]).map(math.exp)
        return frame
    grouped = frame.groupby("language", sort=False).agg(texts=("text", "size"), tokens=("tokens", "sum"), nll=("nll", "sum"))
    grouped["nll"] = grouped["nll"] / grouped["tokens"]
    grouped["perplexity"] = grouped["nll"].map(math.exp)
    return grouped.reset_index()


@dataclass(frozen=True)
class MultipleChoice:
    """A prompt, its answer options, and the index of the right one."""

    prompt: str
    options: tuple[str, ...]
    answer: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise CorpusError("a multiple-choice item needs options")
        if not 0 <= self.answer < len(self.options):
            raise CorpusError(f"answer {self.answer} is not one of the {len(self.options)} options")


def _choices(items: Mapping[str, Sequence[Any]]) -> dict[str, list[MultipleChoice]]:
    out = {}
    for lang, entries in items.items():
        out[normalize_language(lang, allow_unknown=True)] = [
            e if isinstance(e, MultipleChoice) else MultipleChoice(e["prompt"], tuple(e["options"]), int(e["answer"]))
            for e in entries
        ]
    return out


def option_logprobs(
    model: Any,
    entries: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> list[tuple[list[float], list[int]]]:
    """The one implementation of answer scoring: for each ``(prompt, options)``, the
    log-likelihood of every option given the prompt (options tokenised in context:
    the log-probability of the option's tokens within ``prompt + option``) and its
    number of tokens. Prompts too long for ``max_length`` lose their oldest tokens."""
    pairs = [(prompt, option) for prompt, options in entries for option in options]
    scored = _continuations(model, pairs, batch_size=batch_size, max_length=max_length, overflow=overflow,
                            what="option", greedy=False)
    out, at = [], 0
    for _, options in entries:
        k = len(options)
        out.append(([logprob for logprob, _, _ in scored[at : at + k]], [n for _, n, _ in scored[at : at + k]]))
        at += k
    return out


def _continuations(
    model: Any, pairs: Sequence[tuple[str, str]], *, batch_size: int, max_length: int | None, overflow: Overflow,
    what: str, greedy: bool,
) -> list[tuple[float, int, bool | None]]:
    lm = adapt(model)
    check_overflow(overflow, split=False)
    sequences = encode_answers(lm, [c for c, _ in pairs], [a for _, a in pairs], max_length=max_length,
                               overflow=overflow, what=what)
    if greedy:
        sums, counts, hits = sequence_scores(lm, sequences, batch_size)
        return [(-s, n, h) for s, n, h in zip(sums, counts, hits)]
    sums, counts = sequence_nll(lm, sequences, batch_size)
    return [(-s, n, None) for s, n in zip(sums, counts)]


def continuation_logprobs(
    model: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> list[tuple[float, int, bool]]:
    """For each ``(context, continuation)``, the log-likelihood of the continuation
    given the context, its number of tokens, and whether greedy decoding would produce
    it: the scoring of [`option_logprobs()`][tl_multilingual.causal.evaluate.option_logprobs] (continuations tokenised in
    context, contexts too long for ``max_length`` losing their oldest tokens), with
    lm-evaluation-harness's ``is_greedy``.

    Args:
        model: a model or its adapter.
        pairs: ``(context, continuation)`` strings; the continuation carries its own
            leading space (``("The capital of France is", " Paris")``), and a context's
            trailing whitespace that the continuation's first token absorbs goes to the
            continuation (see [`tokens`][tl_multilingual.model.tokens]).
        batch_size: sequences per forward pass.
        max_length: the longest sequence fed (default: the model's context).
        overflow: ``"truncate"`` or ``"error"``.

    Returns:
        Per pair, in order: ``(log-likelihood in nats, tokens, greedy)``.

    Raises:
        CorpusError: a continuation adds no token of its own after its context.
        ContextLengthError: ``overflow="error"`` and a pair is too long, or a
            continuation alone leaves no room for its context.
    """
    scored = _continuations(model, pairs, batch_size=batch_size, max_length=max_length, overflow=overflow,
                            what="continuation", greedy=True)
    return [(logprob, n, bool(hit)) for logprob, n, hit in scored]


def rolling_logprobs(
    model: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "split",
) -> list[tuple[float, int]]:
    """The log-likelihood of each whole text and its number of scored tokens: the sums
    that [`perplexity()`][tl_multilingual.causal.evaluate.perplexity] pools (every token after BOS; from the second token
    when the model reads no BOS, since nothing predicts the first; padding never).

    Args:
        model: a model or its adapter.
        texts: the texts.
        batch_size: sequences per forward pass.
        max_length: the longest sequence fed (default: the model's context).
        overflow: ``"split"`` (default: a longer text is scored in pieces of
            ``max_length`` tokens, each starting with BOS, so every token counts once),
            ``"truncate"`` (its beginning only) or ``"error"``.

    Returns:
        Per text, in order: ``(log-likelihood in nats, scored tokens)``; ``(0.0, 0)``
        for a text with no token to score.

    Raises:
        CorpusError: a text the tokenizer cannot take.
        ContextLengthError: ``overflow="error"`` and a text is too long.
    """
    lm = adapt(model)
    sequences = _predicted(encode(lm, [Text(t) for t in texts], max_length=max_length, overflow=overflow))
    sums, counts = sequence_nll(lm, sequences, batch_size)
    totals = [[0.0, 0] for _ in texts]
    for seq, total, n in zip(sequences, sums, counts):
        totals[seq.text_index][0] -= total
        totals[seq.text_index][1] += n
    return [(float(total), int(n)) for total, n in totals]


def choice_scores(
    model: Any,
    items: Mapping[str, Sequence[Any]],
    *,
    length_normalize: bool = False,
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> pd.DataFrame:
    """Per item: ``language``, ``item``, ``predicted``, ``answer``, ``correct`` and the
    log-likelihood of every option (``scores``; see [`option_logprobs()`][tl_multilingual.causal.evaluate.option_logprobs])."""
    lm = adapt(model)
    rows = []
    for lang, entries in _choices(items).items():
        require_tokens(lang, len(entries), "items")
        with of_language(lang):
            scored = option_logprobs(lm, [(e.prompt, e.options) for e in entries], batch_size=batch_size,
                                     max_length=max_length, overflow=overflow)
        for i, (entry, (logprobs, counts)) in enumerate(zip(entries, scored)):
            k = len(entry.options)
            scores = [s / (n if length_normalize else 1) for s, n in zip(logprobs, counts)]
            best = max(range(k), key=lambda j: scores[j])
            rows.append(
                {"language": lang, "item": i, "predicted": best, "answer": entry.answer,
                 "correct": best == entry.answer, "scores": scores}
            )
    return pd.DataFrame(rows, columns=["language", "item", "predicted", "answer", "correct", "scores"])


def choice_accuracy(
    model: Any,
    items: Mapping[str, Sequence[Any]],
    *,
    length_normalize: bool = False,
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> pd.DataFrame:
    """Log-likelihood accuracy per language on multiple-choice items (``{language:
    [MultipleChoice or {"prompt", "options", "answer"}]}``)."""
    frame = choice_scores(model, items, length_normalize=length_normalize, batch_size=batch_size,
                          max_length=max_length, overflow=overflow)
    out = frame.groupby("language", sort=False).agg(items=("item", "size"), accuracy=("correct", "mean"))
    return out.reset_index()


def generate(
    model: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> list[str]:
    """Greedy continuations of ``prompts`` (deterministic), cut at the first stop
    string or end-of-sequence token. Interventions active around the call apply to
    every step.

    A continuation is decoded in context (the text that its tokens add to the
    prompt's), so a tokenizer that drops the leading space of a decoded text does not
    drop the continuation's. The model reads at most ``max_length`` tokens (default:
    its context): with ``overflow="truncate"`` the oldest tokens go first (a
    [`TruncationWarning`][tl_multilingual.errors.TruncationWarning] says so); with ``"error"``
    every prompt plus ``max_new_tokens`` must fit."""
    lm = adapt(model)
    check_overflow(overflow, split=False)
    limit = context_limit(lm, max_length)
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    mine = distributed.shard(len(prompts))  # each rank continues its share of the prompts
    every: list[list[int]] = []
    outputs: list[str] = []
    long: dict[int, int] = {}
    for lo in range(0, len(prompts), batch_size):  # every rank checks every prompt: errors agree
        try:
            ids = lm.tokenize(list(prompts[lo : lo + batch_size]))
        except CorpusError as err:
            raise _shifted(err, lo) from err
        empty = [lo + row for row, p in enumerate(ids) if not p]
        if empty:
            raise CorpusError(f"prompt {empty[0]} gives no token: every prompt needs at least one")
        if overflow == "error":
            for row, p in enumerate(ids):
                if len(p) + max_new_tokens > limit:
                    raise ContextLengthError(
                        f"prompt {lo + row} has {len(p)} tokens: with max_new_tokens={max_new_tokens} it needs "
                        f"{len(p) + max_new_tokens}, more than max_length={limit} (the model's n_ctx is {lm.n_ctx}); "
                        "pass overflow='truncate' to let the oldest tokens go"
                    )
        every += ids
    for lo in range(0, len(mine), batch_size):
        ids = [every[i] for i in mine[lo : lo + batch_size]]
        new: list[list[int]] = [[] for _ in ids]
        done = [False] * len(ids)
        for _ in range(max_new_tokens):
            seen, lost = fit(lm, [p + n for p, n in zip(ids, new)], max_length=limit, report=False)
            for row, n in enumerate(lost):
                if n:
                    long.setdefault(mine[lo + row], len(ids[row]) + len(new[row]))
            batch = lm.pad(seen, side="left")
            next_ids = last_logits(lm, batch).argmax(-1).tolist()
            for row, token in enumerate(next_ids):
                if done[row]:
                    continue
                if token == eos:
                    done[row] = True
                    continue
                new[row].append(token)
                done[row] = any(s in _continuation(lm, ids[row], new[row]) for s in stop)
            if all(done):
                break
        for prompt, tokens in zip(ids, new):
            text = _continuation(lm, prompt, tokens)
            for s in stop:
                text = text.split(s)[0] if s in text else text
            outputs.append(text)
    outputs = distributed.gather_in_order(outputs, mine, len(prompts))
    for part in distributed.gather_in_order([long], [distributed.rank()], distributed.world_size()):
        long.update(part)
    report_overflow(lm, sorted(long.items()), len(prompts), max_length=max_length, overflow="truncate",
                    action="truncated to the last", what="prompt")
    return outputs


def _shifted(err: CorpusError, offset: int) -> CorpusError:
    """A tokenizer error of a chunk, re-indexed to the whole list."""
    index = getattr(err, "index", None)
    if index is None or not offset:
        return err
    error = CorpusError(str(err).replace(f"text {index} ", f"text {index + offset} ", 1))
    error.index = index + offset
    return error


def _continuation(lm: ModelAdapter, prompt: list[int], new: list[int]) -> str:
    """The text that ``new`` adds after ``prompt``, decoded in context."""
    decode = lm.tokenizer.decode
    if not new:
        return ""
    head = decode(prompt, skip_special_tokens=True)
    full = decode(prompt + new, skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else decode(new, skip_special_tokens=True)


def answer_accuracy(
    model: Any,
    items: Mapping[str, Sequence[tuple[str, Any]]],
    checker: Callable[[str, Any], bool],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    per_item: bool = False,
    max_length: int | None = None,
    overflow: Overflow = "truncate",
) -> pd.DataFrame:
    """Accuracy of greedy answers per language: ``items`` maps languages to
    ``(prompt, gold)`` pairs; ``checker(generated_text, gold)`` says whether an answer
    is right. With ``per_item``, one row per item with the generated text."""
    rows = []
    for lang, entries in items.items():
        lang = normalize_language(lang, allow_unknown=True)
        require_tokens(lang, len(entries), "items")
        with of_language(lang):
            answers = generate(model, [p for p, _ in entries], max_new_tokens=max_new_tokens, stop=stop,
                               batch_size=batch_size, max_length=max_length, overflow=overflow)
        for i, ((_, gold), text) in enumerate(zip(entries, answers)):
            rows.append({"language": lang, "item": i, "output": text, "gold": gold, "correct": bool(checker(text, gold))})
    frame = pd.DataFrame(rows, columns=["language", "item", "output", "gold", "correct"])
    if per_item:
        return frame
    return frame.groupby("language", sort=False).agg(items=("item", "size"), accuracy=("correct", "mean")).reset_index()
