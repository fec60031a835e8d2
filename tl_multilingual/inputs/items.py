"""Parallel items: one item (a question, a premise/hypothesis pair...) rendered in
several languages, with optional gold answers and answer options per language.

Wang et al. (2024) (Wang et al., "Sharing Matters") classifies neurons per parallel item, so
every item must exist in every language: a missing or empty translation is an error
that names the items and languages, unless ``missing="drop"`` is asked for (then the
dropped items are named in a warning).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from ..errors import CorpusError, warn
from .languages import normalize_language

__all__ = ["ParallelItem", "ParallelItems"]

_CODE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})*")  # en, eng, eng_Latn, zh-Hant


@dataclass(frozen=True)
class ParallelItem:
    """One item in several languages.

    Attributes:
        id: the item's identifier.
        texts: the prompt in each language.
        answers: gold answer(s) per language (the first is used as the target).
        options: answer options per language, for multiple choice.
        label: index of the right option, shared by all languages.
    """

    id: str
    texts: dict[str, str]
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    label: int | None = None

    def answer(self, language: str) -> str | None:
        """The first gold answer in ``language``: the option at ``label`` for multiple
        choice, else the first of ``answers``."""
        if self.label is not None and language in self.options:
            return self.options[language][self.label]
        found = self.answers.get(language)
        return found[0] if found else None


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _by_language(value: Any, languages: Sequence[str] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CorpusError(f"expected a mapping from language to value, got {type(value).__name__}")
    return {normalize_language(k): v for k, v in value.items() if languages is None or k in languages}


class ParallelItems:
    """Items aligned across languages (see the module docstring).

    Build with [`from_records()`][tl_multilingual.inputs.items.ParallelItems.from_records], [`from_frame()`][tl_multilingual.inputs.items.ParallelItems.from_frame], [`from_jsonl()`][tl_multilingual.inputs.items.ParallelItems.from_jsonl] or
    [`from_hf()`][tl_multilingual.inputs.items.ParallelItems.from_hf].
    """

    def __init__(
        self,
        items: Iterable[ParallelItem],
        *,
        languages: Sequence[str] | None = None,
        missing: Literal["error", "drop"] = "error",
    ) -> None:
        items = list(items)
        if not items:
            raise CorpusError("no parallel items")
        langs = [normalize_language(x) for x in languages] if languages else list(
            dict.fromkeys(lang for item in items for lang in item.texts)
        )
        if len(langs) < 2:
            raise CorpusError(f"parallel items need at least two languages, got {langs}")
        gaps = {
            item.id: [lang for lang in langs if not (item.texts.get(lang) or "").strip()]
            for item in items
        }
        gaps = {k: v for k, v in gaps.items() if v}
        if gaps and missing == "error":
            shown = "; ".join(f"{k}: {v}" for k, v in list(gaps.items())[:5])
            raise CorpusError(
                f"{len(gaps)} of {len(items)} items lack translations ({shown}"
                f"{' ...' if len(gaps) > 5 else ''}); fix them or pass missing='drop'"
            )
        if gaps:
            warn(f"dropped {len(gaps)} items without every translation: {sorted(gaps)}")
            items = [item for item in items if item.id not in gaps]
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise CorpusError("item ids repeat")
        for item in items:
            if item.options:
                sizes = {len(item.options.get(lang, ())) for lang in langs}
                if len(sizes) != 1 or 0 in sizes:
                    raise CorpusError(f"item {item.id}: every language needs the same number of options")
                if item.label is None or not 0 <= item.label < sizes.pop():
                    raise CorpusError(f"item {item.id}: options need a label pointing at one of them")
        self.items = items
        self.languages: tuple[str, ...] = tuple(langs)

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        id: str = "id",
        text: str = "text",
        answer: str = "answer",
        options: str = "options",
        label: str = "label",
        languages: Sequence[str] | None = None,
        missing: Literal["error", "drop"] = "error",
    ) -> ParallelItems:
        """From records, in either layout:

        - one record per item: ``{"id", "text": {lang: prompt}, "answer": {lang: gold},
          "options": {lang: [...]}, "label": k}``; or language codes as keys,
          ``{"id": ..., "en": "...", "fr": "..."}``;
        - one record per (item, language): ``{"id", "language", "text", "answer",
          "options", "label"}``, grouped by id.
        """
        records = list(records)
        if records and "language" in records[0]:
            return cls._from_long(records, id, text, answer, options, label, languages, missing)
        items = []
        for i, record in enumerate(records):
            if text in record and isinstance(record[text], Mapping):
                texts = _by_language(record[text])
            else:  # language codes as keys
                texts = {
                    normalize_language(key): value
                    for key, value in record.items()
                    if key not in (id, answer, options, label) and _CODE.fullmatch(key) and isinstance(value, str)
                }
            items.append(
                ParallelItem(
                    id=str(record.get(id, i)),
                    texts=texts,
                    answers={k: _as_tuple(v) for k, v in _by_language(record.get(answer)).items()},
                    options={k: _as_tuple(v) for k, v in _by_language(record.get(options)).items()},
                    label=None if record.get(label) is None else int(record[label]),
                )
            )
        return cls(items, languages=languages, missing=missing)

    @classmethod
    def _from_long(cls, records, id, text, answer, options, label, languages, missing) -> ParallelItems:
        grouped: dict[str, dict[str, Any]] = {}
        for record in records:
            key = str(record[id])
            lang = normalize_language(record["language"])
            entry = grouped.setdefault(key, {"texts": {}, "answers": {}, "options": {}, "label": None})
            entry["texts"][lang] = record[text]
            if record.get(answer) is not None:
                entry["answers"][lang] = _as_tuple(record[answer])
            if record.get(options) is not None:
                entry["options"][lang] = _as_tuple(record[options])
            if record.get(label) is not None:
                if entry["label"] is not None and entry["label"] != int(record[label]):
                    raise CorpusError(f"item {key}: languages disagree on the label")
                entry["label"] = int(record[label])
        items = [ParallelItem(k, v["texts"], v["answers"], v["options"], v["label"]) for k, v in grouped.items()]
        return cls(items, languages=languages, missing=missing)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, **kwargs: Any) -> ParallelItems:
        """From a DataFrame of records (either layout of [`from_records()`][tl_multilingual.inputs.items.ParallelItems.from_records])."""
        return cls.from_records(frame.to_dict("records"), **kwargs)

    @classmethod
    def from_jsonl(cls, path: str | Path, **kwargs: Any) -> ParallelItems:
        """From a JSON Lines file of records."""
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"no such file: {path}")
        from ..persist import read_json

        records = read_json(path, error=CorpusError, lines=True)
        return cls.from_records(records, **kwargs)

    @classmethod
    def from_hf(cls, dataset: Any, **kwargs: Any) -> ParallelItems:
        """From a Hugging Face ``datasets.Dataset`` of records."""
        if not hasattr(dataset, "to_pandas"):
            raise CorpusError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
        return cls.from_frame(dataset.to_pandas(), **kwargs)

    # -- access ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> ParallelItem:
        return self.items[index]

    def __iter__(self):
        return iter(self.items)

    def __repr__(self) -> str:
        return f"ParallelItems({len(self.items)} items, languages={self.languages})"

    def texts(self, language: str) -> list[str]:
        """The prompts of every item in ``language``."""
        lang = normalize_language(language)
        return [item.texts[lang] for item in self.items]

    @property
    def has_options(self) -> bool:
        return all(item.options for item in self.items)

    @property
    def has_answers(self) -> bool:
        return all(item.answer(lang) for item in self.items for lang in self.languages)

    def select(self, languages: Sequence[str]) -> ParallelItems:
        """The items restricted to some languages."""
        return ParallelItems(self.items, languages=languages)

    def head(self, n: int) -> ParallelItems:
        return ParallelItems(self.items[:n], languages=self.languages)

    def to_frame(self) -> pd.DataFrame:
        """One row per (item, language): ``id``, ``language``, ``text``, ``answer``."""
        return pd.DataFrame(
            [
                {"id": item.id, "language": lang, "text": item.texts[lang], "answer": item.answer(lang)}
                for item in self.items
                for lang in self.languages
            ]
        )
