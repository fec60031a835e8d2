"""Bundled data, and loaders for standard multilingual sets.

Bundled (written for this project, MIT-licensed like the code):

- [`parallel()`][tl_multilingual.data.parallel]: 170 sentences in 10 languages (en, de, fr, es, ru, zh, ja, ar, hi,
  th), half everyday, half reasoning-style; as a [`Corpus`][tl_multilingual.inputs.corpus.Corpus] or, with
  [`parallel_items()`][tl_multilingual.data.parallel_items], as [`ParallelItems`][tl_multilingual.inputs.items.ParallelItems];
- [`words()`][tl_multilingual.data.words]: 117 concrete nouns in the same languages, with English cloze
  sentences, for the logit-lens prompts.

Standard sets, from local files or Hugging Face datasets, with language codes mapped:
[`flores()`][tl_multilingual.data.flores] (FLORES+ / FLORES-200), [`mgsm()`][tl_multilingual.data.mgsm], [`xnli()`][tl_multilingual.data.xnli].
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from ..errors import CorpusError
from ..inputs.corpus import Corpus
from ..inputs.items import ParallelItem, ParallelItems
from ..inputs.languages import flores_code, normalize_language

__all__ = [
    "LANGUAGES", "parallel", "parallel_records", "parallel_items", "words", "flores", "flores_languages", "mgsm", "xnli",
]

LANGUAGES = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "th")
Register = Literal["everyday", "reasoning"]


@cache
def _jsonl(name: str) -> tuple[dict[str, Any], ...]:
    text = files(__name__).joinpath(name).read_text(encoding="utf-8")
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def _languages(languages: Sequence[str] | None) -> list[str]:
    chosen = [normalize_language(x) for x in (languages or LANGUAGES)]
    unknown = [x for x in chosen if x not in LANGUAGES]
    if unknown:
        raise CorpusError(f"the bundled data has no {unknown}; it covers {list(LANGUAGES)}")
    return chosen


def parallel_records(register: Register | None = None) -> list[dict[str, Any]]:
    """The bundled parallel sentences: ``{"id", "register", "en", "de", ...}``."""
    return [dict(r) for r in _jsonl("parallel.jsonl") if register is None or r["register"] == register]


def parallel(languages: Sequence[str] | None = None, *, register: Register | None = None) -> Corpus:
    """The bundled parallel sentences as a corpus (same order in every language)."""
    records = parallel_records(register)
    return Corpus.from_dict({lang: [r[lang] for r in records] for lang in _languages(languages)})


def parallel_items(languages: Sequence[str] | None = None, *, register: Register | None = None) -> ParallelItems:
    """The bundled parallel sentences as [`ParallelItems`][tl_multilingual.inputs.items.ParallelItems] (for sharing classes)."""
    langs = _languages(languages)
    items = [ParallelItem(r["id"], {lang: r[lang] for lang in langs}) for r in parallel_records(register)]
    return ParallelItems(items, languages=langs)


def words(languages: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The bundled word list: ``{"concept", "<language>": word, ..., "cloze_en"}``."""
    langs = _languages(languages)
    keep = {"concept", "cloze_en", *langs}
    return [{k: v for k, v in r.items() if k in keep} for r in _jsonl("words.jsonl")]


# -- standard sets ---------------------------------------------------------------------


@cache
def flores_languages() -> tuple[str, ...]:
    """The 204 FLORES-200 codes (``ace_Arab`` ... ``zul_Latn``), as its files are named."""
    text = files(__name__).joinpath("flores200.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def _hf(path: str, /, **kwargs: Any) -> Any:
    """``datasets.load_dataset(path, **kwargs)``, or a library error saying what is missing."""
    try:
        import datasets
    except ImportError:
        raise CorpusError('loading from the Hugging Face hub needs datasets: pip install "tl-multilingual[hf]"') from None
    return datasets.load_dataset(path, **kwargs)


# FLORES names individual languages, where ISO 639-1 codes name macrolanguages: asking
# for the macrolanguage reads the individual language FLORES uses for it (FLORES-200
# zho_Hans is cmn_Hans in FLORES+). An individual language is only ever itself.
_FLORES_ALIASES = {
    "zho": ("cmn",), "ara": ("arb",), "swa": ("swh",), "fas": ("pes",), "msa": ("zsm",), "est": ("ekk",),
    "lav": ("lvs",), "uzb": ("uzn",), "aze": ("azj",), "mon": ("khk",), "nep": ("npi",), "ori": ("ory",),
    "pus": ("pbt",), "sqi": ("als",), "kur": ("kmr",), "yid": ("ydd",), "orm": ("gaz",), "mlg": ("plt",),
    "que": ("quy",), "aym": ("ayr",), "kau": ("knc",),
}


def _flores_codes(language: str) -> tuple[str, list[str]]:
    """The key of a requested language and its FLORES codes, its own first."""
    key = normalize_language(language)
    own = flores_code(key)
    alpha3, script = own.split("_")
    return key, [own] + [f"{code}_{script}" for code in _FLORES_ALIASES.get(alpha3, ())]


def flores(
    source: str | Path | Any,
    languages: Sequence[str],
    *,
    split: str = "devtest",
    limit: int | None = None,
) -> Corpus:
    """FLORES+ / FLORES-200 sentences as a parallel corpus.

    Each language reads its own file or rows: ``prs_Arab`` (Dari) reads
    ``prs_Arab.devtest``, never Iranian Persian's. A macrolanguage reads the individual
    language FLORES uses for it when the folder has no file of its own (``zh`` reads
    ``zho_Hans`` or ``cmn_Hans``, ``ar`` reads ``arb_Arab``). Corpus keys are the
    requested languages, normalised (see [`tl_multilingual.normalize_language()`][tl_multilingual.inputs.languages.normalize_language]).

    Args:
        source: a folder of ``<code>.<split>`` text files (FLORES-200 layout, e.g.
            ``eng_Latn.devtest``, directly or under ``<split>/``) or of
            ``<code>.parquet`` files (FLORES+); a ``datasets.Dataset`` with
            ``iso_639_3``, ``iso_15924`` and ``text`` columns; or a hub name
            (``"openlanguagedata/flores_plus"``), of which only the requested
            languages' configurations are loaded.
        languages: language codes or names (``"prs_Arab"``, ``"en"``, ``"Chinese"``).
        split: ``"dev"`` or ``"devtest"``.
        limit: keep the first ``limit`` sentences of each language.

    Raises:
        CorpusError: a language has no file or rows in ``source`` (the message lists
            what there is).
        LanguageError: a code is not a language.
    """
    texts: dict[str, list[str]] = {}
    table = None
    for language in languages:
        key, codes = _flores_codes(language)
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            lines = _flores_file(Path(source), language, codes, split)
        elif isinstance(source, (str, Path)):
            lines = _flores_hub(str(source), language, codes, split)
        else:
            if table is None:
                table = source.to_pandas()
            names = table["iso_639_3"] + "_" + table["iso_15924"]
            lines = next((table[names == code]["text"].tolist() for code in codes if (names == code).any()), None)
            if lines is None:
                present = sorted(set(names))
                raise CorpusError(f"the dataset has no rows for {language!r} ({' or '.join(codes)}); "
                                  f"it has {_listing(present)}")
        if key in texts:
            raise CorpusError(f"{language!r} is asked for twice (both mean {key!r})")
        texts[key] = lines[:limit]
    return Corpus.from_dict(texts)


def _listing(codes: Sequence[str], most: int = 20) -> str:
    if not codes:
        return "none"
    shown = ", ".join(codes[:most])
    return f"{len(codes)}: {shown}" + (", ..." if len(codes) > most else "")


def _flores_file(folder: Path, language: str, codes: list[str], split: str) -> list[str]:
    for code in codes:
        for path in (folder / f"{code}.{split}", folder / split / f"{code}.{split}"):
            if path.is_file():
                return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for path in (folder / split / f"{code}.parquet", folder / f"{code}.parquet"):
            if path.is_file():
                import pandas as pd

                return pd.read_parquet(path)["text"].tolist()
    present = sorted(
        {p.name.split(".")[0] for where in (folder, folder / split) if where.is_dir() for p in where.iterdir()
         if p.suffix in (f".{split}", ".parquet")}
    )
    wanted = " or ".join(f"{code}.{split}" for code in codes)
    raise CorpusError(f"no FLORES file for {language!r} ({wanted} or .parquet) in {folder} or {folder / split}; "
                      f"files for {_listing(present)}")


def _flores_hub(name: str, language: str, codes: list[str], split: str) -> list[str]:
    """Rows of one language from a hub dataset with one configuration per language (FLORES+)."""
    errors = []
    for code in codes:
        try:
            dataset = _hf(name, name=code, split=split)
        except CorpusError:
            raise
        except (ValueError, FileNotFoundError) as err:  # no such configuration
            errors.append(f"{code}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
            continue
        return [str(t) for t in dataset.to_pandas()["text"].tolist()]
    raise CorpusError(f"{name} has no configuration for {language!r} ({' or '.join(codes)}): {'; '.join(errors)}")


def mgsm(
    source: str | Path | Any,
    languages: Sequence[str],
    *,
    template: str = "Question: {question}\nAnswer:",
    limit: int | None = None,
) -> ParallelItems:
    """MGSM (grade-school maths in 10+ languages) as parallel items; the gold answer is
    the number, with a leading space.

    ``source`` is a folder of ``mgsm_<lang>.tsv`` files (question, answer number; the
    original release), or a callable/hub name giving, per language, a dataset with
    ``question`` and ``answer_number`` columns (``"juletxara/mgsm"``).
    """
    per_lang: dict[str, list[tuple[str, str]]] = {}
    for language in languages:
        lang = normalize_language(language)
        if isinstance(source, (str, Path)) and Path(source).is_dir():
            path = Path(source) / f"mgsm_{lang}.tsv"
            if not path.is_file():
                raise CorpusError(f"no {path.name} in {source}")
            with path.open(encoding="utf-8") as handle:
                rows = [(r[0], r[1]) for r in csv.reader(handle, delimiter="\t") if len(r) >= 2]
        else:
            dataset = source(lang) if callable(source) else _hf(str(source), name=lang, split="test")
            frame = dataset.to_pandas()
            rows = list(zip(frame["question"], frame["answer_number"].astype(str)))
        per_lang[lang] = [(q, _number(a)) for q, a in rows][:limit]
    return _aligned(per_lang, lambda q: template.format(question=q))


def _number(answer: str) -> str:
    value = float(str(answer).replace(",", ""))
    return f" {int(value)}" if value.is_integer() else f" {value}"


def _aligned(per_lang: dict[str, list[tuple[str, str]]], render) -> ParallelItems:
    sizes = {lang: len(rows) for lang, rows in per_lang.items()}
    if len(set(sizes.values())) != 1:
        raise CorpusError(f"the languages have different numbers of items: {sizes}")
    n = next(iter(sizes.values()))
    items = [
        ParallelItem(
            str(i),
            {lang: render(rows[i][0]) for lang, rows in per_lang.items()},
            {lang: (rows[i][1],) for lang, rows in per_lang.items()},
        )
        for i in range(n)
    ]
    return ParallelItems(items, languages=list(per_lang))


XNLI_LABELS = (" True", " Neither", " False")  # entailment, neutral, contradiction


def xnli(
    source: str | Path | Any,
    languages: Sequence[str],
    *,
    split: str = "test",
    template: str = "{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:",
    options: Sequence[str] = XNLI_LABELS,
    limit: int | None = None,
) -> ParallelItems:
    """XNLI as multiple-choice parallel items (options: ``True``, ``Neither``,
    ``False`` for entailment, neutral, contradiction).

    ``source`` is the XNLI-1.0 ``xnli.<split>.tsv`` file (columns ``language``,
    ``gold_label``, ``sentence1``, ``sentence2``, ``pairID``), or a callable/hub name
    giving, per language, a dataset with ``premise``, ``hypothesis`` and ``label``
    (``"facebook/xnli"``).
    """
    labels = {"entailment": 0, "neutral": 1, "contradiction": 2}
    per_lang: dict[str, list[tuple[str, str, int]]] = {}
    if isinstance(source, (str, Path)) and Path(source).is_file():
        with Path(source).open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        for language in languages:
            lang = normalize_language(language)
            mine = sorted((r for r in rows if normalize_language(r["language"]) == lang), key=lambda r: r["pairID"])
            per_lang[lang] = [(r["sentence1"], r["sentence2"], labels[r["gold_label"]]) for r in mine][:limit]
    else:
        for language in languages:
            lang = normalize_language(language)
            dataset = source(lang) if callable(source) else _hf(str(source), name=lang, split=split)
            frame = dataset.to_pandas()
            per_lang[lang] = list(zip(frame["premise"], frame["hypothesis"], frame["label"].astype(int)))[:limit]
    sizes = {lang: len(rows) for lang, rows in per_lang.items()}
    if len(set(sizes.values())) != 1:
        raise CorpusError(f"the languages have different numbers of items: {sizes}")
    first = next(iter(per_lang.values()))
    items = []
    for i in range(len(first)):
        if len({rows[i][2] for rows in per_lang.values()}) != 1:
            raise CorpusError(f"item {i}: the languages disagree on the label; the files are not aligned")
        items.append(
            ParallelItem(
                str(i),
                {lang: template.format(premise=rows[i][0], hypothesis=rows[i][1]) for lang, rows in per_lang.items()},
                options={lang: tuple(options) for lang in per_lang},
                label=first[i][2],
            )
        )
    return ParallelItems(items, languages=list(per_lang))
