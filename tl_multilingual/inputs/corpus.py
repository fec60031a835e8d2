"""Texts per language: what the model reads to collect statistics.

A [`Corpus`][tl_multilingual.inputs.corpus.Corpus] maps canonical language tags (see [`languages`][tl_multilingual.inputs.languages]) to texts. A
text is either plain, or a prompt with a ``response`` (Zhang et al. (AAAI-26) counts only the
response tokens; see [`tokens`][tl_multilingual.model.tokens]). Parallel corpora (the same items in every
language) are ordinary corpora whose languages have equally many texts.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import CorpusError, LanguageError
from .languages import Fold, normalize_language

__all__ = ["Corpus", "Text"]


@dataclass(frozen=True)
class Text:
    """One text; when ``response`` is set, ``text`` is the prompt it answers."""

    text: str
    response: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise CorpusError(f"texts must be strings, got {type(self.text).__name__}")
        if self.response is not None and not isinstance(self.response, str):
            raise CorpusError(f"responses must be strings, got {type(self.response).__name__}")


def _as_text(item: Any) -> Text:
    if isinstance(item, Text):
        return item
    if isinstance(item, str):
        return Text(item)
    if isinstance(item, Mapping):
        if "prompt" in item:
            return Text(item["prompt"], item.get("response"))
        if "text" in item:
            return Text(item["text"], item.get("response"))
        raise CorpusError(f"a text record needs a 'text' or 'prompt' field, got keys {sorted(item)}")
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return Text(item[0], item[1])
    raise CorpusError(
        f"cannot read a text from {type(item).__name__}: use a string, a (prompt, response) "
        "pair or a mapping with 'text' or 'prompt'"
    )


class Corpus:
    """Texts per language, in a fixed language order.

    Build one with [`from_dict()`][tl_multilingual.inputs.corpus.Corpus.from_dict], [`from_frame()`][tl_multilingual.inputs.corpus.Corpus.from_frame], [`from_json()`][tl_multilingual.inputs.corpus.Corpus.from_json],
    [`from_text_files()`][tl_multilingual.inputs.corpus.Corpus.from_text_files] or [`from_hf()`][tl_multilingual.inputs.corpus.Corpus.from_hf]. Language codes are normalised
    (``eng_Latn`` -> ``en``, see [`tl_multilingual.normalize_language()`][tl_multilingual.inputs.languages.normalize_language]; the codes
    as given stay in [`codes`][tl_multilingual.inputs.corpus.Corpus.codes]); unknown codes are an error unless
    ``allow_unknown``. ``fold`` and ``keep_variants`` are passed to
    [`normalize_language()`][tl_multilingual.inputs.languages.normalize_language] ([`folded()`][tl_multilingual.inputs.corpus.Corpus.folded] folds afterwards).

    Raises:
        CorpusError: no languages, a language given twice, or texts that are not texts.
        LanguageError: an unknown language code (without ``allow_unknown``).
    """

    def __init__(
        self,
        texts: Mapping[str, Iterable[Any]],
        *,
        allow_unknown: bool = False,
        fold: Fold = False,
        keep_variants: bool = False,
    ) -> None:
        data: dict[str, tuple[Text, ...]] = {}
        codes: dict[str, str] = {}
        for code, items in texts.items():
            lang = normalize_language(code, allow_unknown=allow_unknown, fold=fold, keep_variants=keep_variants)
            if lang in data:
                raise CorpusError(f"language {code!r} appears twice (both {code!r} and {codes[lang]!r} mean {lang!r})")
            if isinstance(items, str):
                raise CorpusError(f"texts of {code!r} must be a list of texts, not one string")
            data[lang] = tuple(_as_text(item) for item in items)
            codes[lang] = code
        if not data:
            raise CorpusError("the corpus has no languages")
        self._texts = data
        self._codes = codes

    @classmethod
    def _derived(cls, texts: Mapping[str, Sequence[Text]], codes: Mapping[str, str]) -> Corpus:
        """A corpus of already-canonical keys (no renormalisation)."""
        corpus = cls.__new__(cls)
        corpus._texts = {lang: tuple(t) for lang, t in texts.items()}
        corpus._codes = {lang: codes.get(lang, lang) for lang in texts}
        if not corpus._texts:
            raise CorpusError("the corpus has no languages")
        return corpus

    # -- construction ----------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Iterable[Any]], *, allow_unknown: bool = False, fold: Fold = False,
        keep_variants: bool = False,
    ) -> Corpus:
        """From ``{language: [text, ...]}``; a text may be a string, a
        ``(prompt, response)`` pair or a mapping with ``text``/``prompt`` and ``response``."""
        return cls(data, allow_unknown=allow_unknown, fold=fold, keep_variants=keep_variants)

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        language: str | None = "language",
        text: str = "text",
        response: str | None = None,
        allow_unknown: bool = False,
    ) -> Corpus:
        """From a DataFrame, long or wide.

        Long: one row per text, a ``language`` column and a ``text`` column (and
        optionally a ``response`` column). Wide (``language=None``): one column per
        language, one row per parallel item; empty cells are skipped.
        """
        if language is None:
            return cls(
                {col: [v for v in frame[col].tolist() if isinstance(v, str) and v] for col in frame},
                allow_unknown=allow_unknown,
            )
        missing = [c for c in (language, text, response) if c is not None and c not in frame]
        if missing:
            raise CorpusError(f"the frame has no column(s) {missing}; it has {list(frame.columns)}")
        grouped: dict[str, list[Text]] = {}
        for row in frame.itertuples(index=False):
            record = row._asdict()
            resp = record[response] if response is not None else None
            grouped.setdefault(str(record[language]), []).append(Text(record[text], resp))
        return cls(grouped, allow_unknown=allow_unknown)

    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        language: str = "language",
        text: str = "text",
        response: str | None = "response",
        allow_unknown: bool = False,
    ) -> Corpus:
        """From records such as ``{"language": "fr", "text": "...", "response": "..."}``."""
        grouped: dict[str, list[Text]] = {}
        for i, record in enumerate(records):
            if language not in record or (text not in record and "prompt" not in record):
                raise CorpusError(f"record {i} needs {language!r} and {text!r} fields: {record!r}")
            body = record[text] if text in record else record["prompt"]
            resp = record.get(response) if response is not None else None
            grouped.setdefault(str(record[language]), []).append(Text(body, resp))
        return cls(grouped, allow_unknown=allow_unknown)

    @classmethod
    def from_json(cls, path: str | Path, *, allow_unknown: bool = False, **fields: str) -> Corpus:
        """From a JSON file ``{language: [texts]}`` or a JSON Lines file of records
        (``.jsonl``; field names as in [`from_records()`][tl_multilingual.inputs.corpus.Corpus.from_records])."""
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"no such file: {path}")
        from ..persist import read_json

        if path.suffix == ".jsonl":
            records = read_json(path, error=CorpusError, lines=True)
            return cls.from_records(records, allow_unknown=allow_unknown, **fields)
        data = read_json(path, error=CorpusError)
        if isinstance(data, list):
            return cls.from_records(data, allow_unknown=allow_unknown, **fields)
        if not isinstance(data, dict):
            raise CorpusError(f"{path} must hold a {{language: [texts]}} object or a list of records")
        return cls(data, allow_unknown=allow_unknown)

    @classmethod
    def from_text_files(
        cls, files: Mapping[str, str | Path] | str | Path, *, allow_unknown: bool = False
    ) -> Corpus:
        """From plain text files, one text per non-empty line.

        ``files`` maps languages to paths, or names a folder whose ``<language>.txt``
        files are read (the file stem is the language code).
        """
        if isinstance(files, (str, Path)):
            folder = Path(files)
            if not folder.is_dir():
                raise CorpusError(f"no such folder: {folder}")
            files = {p.stem: p for p in sorted(folder.glob("*.txt"))}
            if not files:
                raise CorpusError(f"{folder} holds no .txt files")
        data = {}
        for lang, file in files.items():
            file = Path(file)
            if not file.is_file():
                raise CorpusError(f"no such file for {lang!r}: {file}")
            lines = file.read_text(encoding="utf-8").splitlines()
            data[lang] = [line.strip() for line in lines if line.strip()]
        return cls(data, allow_unknown=allow_unknown)

    @classmethod
    def from_hf(
        cls,
        dataset: Any,
        *,
        language: str | None = "language",
        text: str = "text",
        response: str | None = None,
        allow_unknown: bool = False,
    ) -> Corpus:
        """From a Hugging Face ``datasets.Dataset`` (long or wide, as [`from_frame()`][tl_multilingual.inputs.corpus.Corpus.from_frame])."""
        to_pandas = getattr(dataset, "to_pandas", None)
        if to_pandas is None:
            raise CorpusError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
        return cls.from_frame(
            to_pandas(), language=language, text=text, response=response, allow_unknown=allow_unknown
        )

    # -- access ------------------------------------------------------------------------

    @property
    def languages(self) -> tuple[str, ...]:
        """Canonical language tags, in corpus order."""
        return tuple(self._texts)

    @property
    def codes(self) -> dict[str, str]:
        """The language codes as given, by canonical key (``{"en": "eng_Latn"}``)."""
        return dict(self._codes)

    def unknown_languages(self) -> list[str]:
        """Keys that name no known language (kept by ``allow_unknown``)."""
        unknown = []
        for lang in self._texts:
            try:
                normalize_language(lang, keep_variants=True)
            except LanguageError:
                unknown.append(lang)
        return unknown

    def __getitem__(self, language: str) -> tuple[Text, ...]:
        return self._texts[self._key(language)]

    def __contains__(self, language: object) -> bool:
        return isinstance(language, str) and language in self._texts

    def __len__(self) -> int:
        return sum(len(texts) for texts in self._texts.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{lang}: {len(texts)}" for lang, texts in self._texts.items())
        return f"Corpus({sizes})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Corpus) and self._texts == other._texts

    @property
    def has_responses(self) -> bool:
        """Whether every text is a prompt with a response."""
        return all(t.response is not None for texts in self._texts.values() for t in texts)

    @property
    def is_parallel(self) -> bool:
        """Whether every language has the same number of texts."""
        return len({len(texts) for texts in self._texts.values()}) == 1

    def fingerprint(self) -> str:
        """SHA-256 of the languages and texts, in order: identifies the data in manifests."""
        digest = hashlib.sha256()
        for lang, texts in self._texts.items():
            digest.update(json.dumps([lang, [[t.text, t.response] for t in texts]]).encode())
        return digest.hexdigest()

    def to_frame(self) -> pd.DataFrame:
        """Tidy DataFrame: one row per text (``language``, ``index``, ``text``, ``response``)."""
        rows = [
            {"language": lang, "index": i, "text": t.text, "response": t.response}
            for lang, texts in self._texts.items()
            for i, t in enumerate(texts)
        ]
        return pd.DataFrame(rows, columns=["language", "index", "text", "response"])

    # -- derived corpora ---------------------------------------------------------------

    def _key(self, language: str) -> str:
        lang = language if language in self._texts else normalize_language(language, allow_unknown=True)
        if lang not in self._texts:
            raise CorpusError(f"the corpus has no language {language!r}; it has {self.languages}")
        return lang

    def select(self, languages: Sequence[str]) -> Corpus:
        """The corpus restricted to (and reordered as) ``languages``."""
        keys = [self._key(lang) for lang in languages]
        if len(set(keys)) != len(keys):
            raise CorpusError(f"languages {list(languages)} name a language twice")
        return Corpus._derived({k: self._texts[k] for k in keys}, self._codes)

    def head(self, n: int) -> Corpus:
        """The first ``n`` texts of every language."""
        return Corpus._derived({lang: texts[:n] for lang, texts in self._texts.items()}, self._codes)

    def folded(self, fold: Fold = True) -> Corpus:
        """The corpus with its keys folded (``"macrolanguage"``, ``"region"`` or both:
        ``zh-TW`` -> ``zh-Hant``, ``nb`` -> ``no``); two keys that fold together are an
        error, not silently merged.

        Raises:
            CorpusError: two languages fold into one key.
        """
        texts: dict[str, tuple[Text, ...]] = {}
        codes: dict[str, str] = {}
        for lang, items in self._texts.items():
            key = normalize_language(lang, allow_unknown=True, fold=fold, keep_variants=True)
            if key in texts:
                raise CorpusError(f"{codes[key]!r} and {self._codes[lang]!r} both fold into {key!r}")
            texts[key], codes[key] = items, self._codes[lang]
        return Corpus._derived(texts, codes)

    def split(self, held_out: float | int, *, seed: int = 0) -> tuple[Corpus, Corpus]:
        """Split every language into (kept, held-out) texts.

        ``held_out`` is a fraction (``0.2``) or a count per language. Parallel corpora
        keep their alignment: the same item indices are held out in every language.
        """
        kept: dict[str, list[Text]] = {}
        out: dict[str, list[Text]] = {}
        shared = None
        if self.is_parallel:
            shared = self._held_out_indices(len(next(iter(self._texts.values()))), held_out, seed)
        for lang, texts in self._texts.items():
            chosen = shared if shared is not None else self._held_out_indices(len(texts), held_out, seed)
            kept[lang] = [t for i, t in enumerate(texts) if i not in chosen]
            out[lang] = [t for i, t in enumerate(texts) if i in chosen]
        return Corpus._derived(kept, self._codes), Corpus._derived(out, self._codes)

    @staticmethod
    def _held_out_indices(n: int, held_out: float | int, seed: int) -> set[int]:
        if isinstance(held_out, float):
            if not 0.0 < held_out < 1.0:
                raise CorpusError(f"a held-out fraction must be in (0, 1), got {held_out}")
            count = round(n * held_out)
        else:
            count = int(held_out)
        if not 0 < count < n:
            raise CorpusError(f"cannot hold out {held_out} of {n} texts and keep some of each")
        return set(random.Random(seed).sample(range(n), count))
