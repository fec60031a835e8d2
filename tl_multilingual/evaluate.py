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
  ``length_normalize``);
- answer accuracy: greedy decoding, then a user-supplied checker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from .adapters import adapt
from .corpus import Corpus, Text
from .errors import CorpusError
from .languages import normalize_language
from .readout import last_logits, sequence_nll
from .tokens import TokenPolicy, encode, encode_language, of_language, require_tokens

__all__ = [
    "perplexity",
    "text_nll",
    "MultipleChoice",
    "choice_accuracy",
    "answer_accuracy",
    "generate",
]

def text_nll(
    model: Any,
    corpus: Corpus,
    *,
    token_policy: TokenPolicy = "all",
    batch_size: int = 8,
    max_length: int | None = None,
) -> pd.DataFrame:
    """Per-text negative log-likelihood: one row per text with ``language``, ``text``
    (index), ``tokens`` (predicted tokens counted) and ``nll`` (their summed NLL).
    Texts of all languages share batches."""
    lm = adapt(model)
    owners, sequences = [], []
    for lang in corpus.languages:
        encoded = encode_language(lm, lang, corpus[lang], policy=token_policy, max_length=max_length,
                                  overflow="truncate")
        # Nothing predicts the first position: count targets from position 1.
        predicted = [replace(seq, start=max(seq.start, 1)) for seq in encoded if seq.stop > max(seq.start, 1)]
        require_tokens(lang, sum(seq.n_counted for seq in predicted), "predicted tokens")
        owners += [(lang, seq.text_index) for seq in predicted]
        sequences += predicted
    sums, counts = sequence_nll(lm, sequences, batch_size)
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
) -> pd.DataFrame:
    """Perplexity per language (``exp`` of the mean token NLL, pooled over texts), or per
    text with ``per_text``. Use ``token_policy="response"`` to score only responses."""
    frame = text_nll(model, corpus, token_policy=token_policy, batch_size=batch_size, max_length=max_length)
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


def choice_scores(
    model: Any, items: Mapping[str, Sequence[Any]], *, length_normalize: bool = False, batch_size: int = 8
) -> pd.DataFrame:
    """Per item: ``language``, ``item``, ``predicted``, ``answer``, ``correct`` and the
    log-likelihood of every option (``scores``)."""
    lm = adapt(model)
    rows = []
    for lang, entries in _choices(items).items():
        require_tokens(lang, len(entries), "items")
        texts = [Text(e.prompt, option) for e in entries for option in e.options]
        with of_language(lang):
            sequences = encode(lm, texts, policy="response")
        if len(sequences) != len(texts):
            raise CorpusError(f"{lang}: an option tokenises to nothing; every option needs a token")
        sums, counts = sequence_nll(lm, sequences, batch_size)
        at = 0
        for i, entry in enumerate(entries):
            k = len(entry.options)
            scores = [-s / (n if length_normalize else 1) for s, n in zip(sums[at : at + k], counts[at : at + k])]
            at += k
            best = max(range(k), key=lambda j: scores[j])
            rows.append(
                {"language": lang, "item": i, "predicted": best, "answer": entry.answer,
                 "correct": best == entry.answer, "scores": scores}
            )
    return pd.DataFrame(rows, columns=["language", "item", "predicted", "answer", "correct", "scores"])


def choice_accuracy(
    model: Any, items: Mapping[str, Sequence[Any]], *, length_normalize: bool = False, batch_size: int = 8
) -> pd.DataFrame:
    """Log-likelihood accuracy per language on multiple-choice items (``{language:
    [MultipleChoice or {"prompt", "options", "answer"}]}``)."""
    frame = choice_scores(model, items, length_normalize=length_normalize, batch_size=batch_size)
    out = frame.groupby("language", sort=False).agg(items=("item", "size"), accuracy=("correct", "mean"))
    return out.reset_index()


def generate(
    model: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
) -> list[str]:
    """Greedy continuations of ``prompts`` (deterministic), cut at the first stop
    string or end-of-sequence token. Interventions active around the call apply to
    every step."""
    lm = adapt(model)
    eos = getattr(lm.tokenizer, "eos_token_id", None)
    outputs: list[str] = []
    for lo in range(0, len(prompts), batch_size):
        try:
            ids = lm.tokenize(list(prompts[lo : lo + batch_size]))
        except CorpusError as err:
            raise _shifted(err, lo) from err
        empty = [lo + row for row, p in enumerate(ids) if not p]
        if empty:
            raise CorpusError(f"prompt {empty[0]} gives no token: every prompt needs at least one")
        new: list[list[int]] = [[] for _ in ids]
        done = [False] * len(ids)
        for _ in range(max_new_tokens):
            batch = lm.pad([p + n for p, n in zip(ids, new)], side="left")
            next_ids = last_logits(lm, batch).argmax(-1).tolist()
            for row, token in enumerate(next_ids):
                if done[row]:
                    continue
                if token == eos:
                    done[row] = True
                    continue
                new[row].append(token)
                text = lm.tokenizer.decode(new[row], skip_special_tokens=True)
                done[row] = any(s in text for s in stop)
            if all(done):
                break
        for tokens in new:
            text = lm.tokenizer.decode(tokens, skip_special_tokens=True)
            for s in stop:
                text = text.split(s)[0] if s in text else text
            outputs.append(text)
    return outputs


def _shifted(err: CorpusError, offset: int) -> CorpusError:
    """A tokenizer error of a chunk, re-indexed to the whole list."""
    index = getattr(err, "index", None)
    if index is None or not offset:
        return err
    error = CorpusError(str(err).replace(f"text {index} ", f"text {index + offset} ", 1))
    error.index = index + offset
    return error


def answer_accuracy(
    model: Any,
    items: Mapping[str, Sequence[tuple[str, Any]]],
    checker: Callable[[str, Any], bool],
    *,
    max_new_tokens: int = 32,
    stop: Sequence[str] = ("\n",),
    batch_size: int = 8,
    per_item: bool = False,
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
                               batch_size=batch_size)
        for i, ((_, gold), text) in enumerate(zip(entries, answers)):
            rows.append({"language": lang, "item": i, "output": text, "gold": gold, "correct": bool(checker(text, gold))})
    frame = pd.DataFrame(rows, columns=["language", "item", "output", "gold", "correct"])
    if per_item:
        return frame
    return frame.groupby("language", sort=False).agg(items=("item", "size"), accuracy=("correct", "mean")).reset_index()
