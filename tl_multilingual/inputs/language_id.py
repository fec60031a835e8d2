"""Which language a text is in:
[`language_of()`][tl_multilingual.inputs.language_id.language_of], and a corpus purity
filter, [`purity_filter()`][tl_multilingual.inputs.language_id.purity_filter].

Web-scale corpora mix languages (a French page quoting English, a "Hindi" line in
Latin-script English); activation statistics of language ``k`` should count text in
language ``k``. Steering and language-forcing studies score generations the same way
(the share written in the target language).

The default backend is Lingua ([`Lingua`][tl_multilingual.inputs.language_id.Lingua]; the
``lingua-language-detector`` package, Stahl, 2021-2025), whose models ship in the
wheel, so it works offline. Any callable ``texts -> labels`` is a backend too, e.g. a
fastText language-identification model such as GlotLID (Kargaran et al., 2023) or
OpenLID (Burchell et al., 2023) that the user loads::

    model = fasttext.load_model("glotlid.bin")
    backend = lambda texts: [(l[0], float(p[0])) for l, p in (model.predict(t) for t in texts)]
    tlm.inputs.language_id.language_of(texts, backend=backend)

A backend's label is read as a language code with
[`normalize_language()`][tl_multilingual.inputs.languages.normalize_language]
(fastText's ``__label__`` prefix is dropped, so ``__label__fra_Latn`` is ``fr``); a
label that names no language (``und``) is no detection. Detected and expected
languages are compared with
[`same_language()`][tl_multilingual.inputs.languages.same_language]: macrolanguages
folded, scripts and regions not compared.

Confidence is the backend's: Lingua's is the relative confidence of the detected
language among the candidate languages (values over all candidates sum to 1), so it
is lower with more candidates and for shorter texts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal

import pandas as pd

from ..errors import CorpusError, LanguageError, TLMultilingualError
from .corpus import Corpus, Text
from .languages import flores_code, macrolanguage, normalize_language, same_language

__all__ = [
    "Lingua",
    "Backend",
    "language_of",
    "purity_filter",
    "DETECTION_COLUMNS",
    "DROPPED_COLUMNS",
]

Backend = Callable[[Sequence[str]], Sequence[Any]]
"""A language identifier: texts in, one label per text out: a code, ``(code,
confidence)``, or None for no detection."""

DETECTION_COLUMNS = ["language", "confidence", "label"]
DROPPED_COLUMNS = ["language", "text", "detected", "confidence", "reason", "content"]
_DTYPES = {"text": "int64", "confidence": float}
_INSTALL = (
    'Lingua is not installed: pip install "tl-multilingual[langid]", or pass backend= '
    "(any callable)"
)


def _lingua() -> Any:
    try:
        import lingua
    except ImportError as err:
        raise TLMultilingualError(_INSTALL) from err
    return lingua


def _lingua_language(key: str) -> Any:
    """Lingua's ``Language`` for a library language key (its macrolanguage's when Lingua
    has only that, e.g. ``arb`` -> Arabic).

    Raises:
        LanguageError: Lingua does not detect the language.
    """
    lingua = _lingua()
    subtag = normalize_language(key).split("-")[0]
    for code in (subtag, macrolanguage(subtag)):
        if not code:
            continue
        alpha3 = flores_code(code).split("_")[0].upper()
        iso = getattr(lingua.IsoCode639_3, alpha3, None)
        if iso is not None:
            return lingua.Language.from_iso_code_639_3(iso)
    supported = sorted(
        normalize_language(lang.iso_code_639_3.name.lower()) for lang in lingua.Language.all()
    )
    raise LanguageError(
        f"Lingua does not detect {key!r}; it detects {supported}. Pass another backend= for it"
    )


@lru_cache(maxsize=8)
def _detector(
    languages: tuple[str, ...] | None, low_accuracy: bool, minimum_relative_distance: float
) -> Any:
    lingua = _lingua()
    if languages is None:
        builder = lingua.LanguageDetectorBuilder.from_all_languages()
    else:
        chosen = list(dict.fromkeys(_lingua_language(key) for key in languages))
        if len(chosen) < 2:
            raise LanguageError(
                f"Lingua needs at least two candidate languages, got {list(languages)}"
            )
        builder = lingua.LanguageDetectorBuilder.from_languages(*chosen)
    if low_accuracy:
        builder = builder.with_low_accuracy_mode()
    if minimum_relative_distance:
        builder = builder.with_minimum_relative_distance(minimum_relative_distance)
    return builder.build()


class Lingua:
    """The default backend: the Lingua language detector (``lingua-language-detector``,
    models in the wheel, offline).

    Args:
        languages: the candidate languages (library codes); None: all 75 that Lingua
            knows (its models load once per process, tens of seconds). Fewer
            candidates detect faster and with higher confidence, but a text in a
            language outside them is read as the nearest candidate.
        low_accuracy: Lingua's low-accuracy mode (trigrams only): faster, much worse
            on short texts.
        minimum_relative_distance: Lingua's setting: a text whose two most likely
            languages are closer than this is given no language.

    Raises:
        TLMultilingualError: ``lingua-language-detector`` is not installed.
        LanguageError: a candidate Lingua does not detect, or fewer than two.
    """

    def __init__(
        self,
        languages: Sequence[str] | None = None,
        *,
        low_accuracy: bool = False,
        minimum_relative_distance: float = 0.0,
    ) -> None:
        self.languages = (
            None if languages is None else tuple(normalize_language(k) for k in languages)
        )
        self.low_accuracy = bool(low_accuracy)
        self.minimum_relative_distance = float(minimum_relative_distance)
        self._detector = _detector(
            self.languages, self.low_accuracy, self.minimum_relative_distance
        )

    def __call__(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        """``(ISO 639-3 code, confidence)`` per text, ``(None, 0.0)`` when Lingua finds
        no language (empty text, digits only, two candidates too close)."""
        out: list[tuple[str | None, float]] = []
        for values in self._detector.compute_language_confidence_values_in_parallel(list(texts)):
            best = values[0] if values else None
            if best is None or best.value <= 0.0:
                out.append((None, 0.0))
            else:
                out.append((best.language.iso_code_639_3.name.lower(), float(best.value)))
        return out

    def __repr__(self) -> str:
        return f"Lingua({list(self.languages) if self.languages else 'all languages'})"


def _read_label(label: Any) -> tuple[str | None, float, str | None]:
    """A backend's answer for one text: ``(library key or None, confidence, raw label)``."""
    confidence = 1.0
    if isinstance(label, (tuple, list)):
        if len(label) != 2:
            raise TLMultilingualError(
                f"a backend answers a code, (code, confidence) or None per text; got {label!r}"
            )
        label, confidence = label
    if label is None:
        return None, 0.0, None
    raw = str(label)
    code = raw.removeprefix("__label__")
    try:
        key = normalize_language(code)
    except LanguageError:
        return None, 0.0, raw
    confidence = float(confidence)
    if not 0.0 <= confidence <= 1.0:
        raise TLMultilingualError(
            f"a backend's confidence is in [0, 1], got {confidence!r} for {raw!r}"
        )
    return key, confidence, raw


def language_of(
    texts: str | Sequence[str],
    *,
    backend: Backend | None = None,
    languages: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The language of each text, as a library language code, with a confidence.

    Args:
        texts: a text or a list of texts.
        backend: a language identifier (see
            [`Backend`][tl_multilingual.inputs.language_id.Backend]); default
            [`Lingua`][tl_multilingual.inputs.language_id.Lingua] over ``languages``.
        languages: the candidate languages of the default backend (None: all that
            Lingua knows); ignored with ``backend``.

    Returns:
        One row per text, in order: ``language`` (the library's key, e.g. ``zh``, or
        None when no language is detected), ``confidence`` (the backend's, in [0, 1]; 1
        for a backend that gives none) and ``label`` (the backend's own answer).

    Raises:
        TLMultilingualError: no backend is given and Lingua is not installed, or a
            backend answers malformed labels or the wrong number of them.
        LanguageError: a candidate language Lingua does not detect.
    """
    items = [texts] if isinstance(texts, str) else list(texts)
    if not all(isinstance(t, str) for t in items):
        bad = next(t for t in items if not isinstance(t, str))
        raise CorpusError(f"language identification takes strings, got {type(bad).__name__}")
    detect = backend if backend is not None else Lingua(languages)
    labels = list(detect(items)) if items else []
    if len(labels) != len(items):
        raise TLMultilingualError(f"the backend gave {len(labels)} labels for {len(items)} texts")
    rows = [_read_label(label) for label in labels]
    return pd.DataFrame(
        {  # object columns: None stays None (no language), not NaN
            "language": pd.Series([r[0] for r in rows], dtype=object),
            "confidence": pd.Series([r[1] for r in rows], dtype=float),
            "label": pd.Series([r[2] for r in rows], dtype=object),
        }
    )


def _checked_text(text: Text, field: str) -> str:
    if field == "text":
        return text.text
    if field == "response":
        return text.response if text.response is not None else text.text
    return text.text if text.response is None else f"{text.text}\n{text.response}"


def purity_filter(
    corpus: Corpus,
    *,
    backend: Backend | None = None,
    languages: Sequence[str] | None = None,
    min_confidence: float = 0.0,
    field: Literal["all", "text", "response"] = "all",
    keep_parallel: bool | None = None,
) -> tuple[Corpus, pd.DataFrame]:
    """Keep the texts of each language that are in that language.

    A text is kept when its detected language is its corpus language (see
    [`same_language()`][tl_multilingual.inputs.languages.same_language]) with at least
    ``min_confidence``. In a parallel corpus, an item dropped in one language is
    dropped in every language (unless ``keep_parallel=False``), so the corpus stays
    parallel.

    Args:
        corpus: the corpus to filter.
        backend: a language identifier (see
            [`language_of()`][tl_multilingual.inputs.language_id.language_of]).
        languages: the candidates of the default backend: None for every language
            Lingua knows (a text in a language outside the candidates would be read as
            the nearest candidate and kept).
        min_confidence: the least confidence to keep a text (the backend's scale;
            Lingua's over all its languages is often below 0.5 for one short sentence).
        field: what is identified: ``"all"`` (prompt and response together),
            ``"text"`` (the prompt or plain text) or ``"response"``.
        keep_parallel: drop an item in every language when it is dropped in one
            (default: when the corpus is parallel).

    Returns:
        ``(filtered corpus, dropped)``: the corpus without the dropped texts (same
        languages and order; a language left with no text is an error instead), and
        one row per dropped text: ``language``, ``text`` (its index in the corpus),
        ``detected``, ``confidence``, ``reason`` and ``content`` (the text checked).

    Raises:
        CorpusError: a language would be left with no text, or ``field`` or
            ``min_confidence`` is invalid.
        TLMultilingualError: no backend is given and Lingua is not installed, or the
            backend answers malformed labels.
        LanguageError: a candidate language Lingua does not detect.
    """
    if field not in ("all", "text", "response"):
        raise CorpusError(f"field is 'all', 'text' or 'response', got {field!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise CorpusError(f"min_confidence is in [0, 1], got {min_confidence!r}")
    parallel = corpus.is_parallel if keep_parallel is None else bool(keep_parallel)
    if parallel and not corpus.is_parallel:
        raise CorpusError(
            "keep_parallel=True needs a parallel corpus (as many texts in every language)"
        )
    owners = [(lang, i) for lang in corpus.languages for i in range(len(corpus[lang]))]
    contents = [_checked_text(corpus[lang][i], field) for lang, i in owners]
    detect = backend if backend is not None else Lingua(languages)
    found = language_of(contents, backend=detect)
    dropped: dict[tuple[str, int], dict[str, Any]] = {}
    for (lang, i), content, row in zip(owners, contents, found.itertuples(index=False)):
        if row.language is None:
            reason = "no language detected"
        elif not same_language(lang, row.language):
            reason = f"detected as {row.language}"
        elif row.confidence < min_confidence:
            reason = f"confidence {row.confidence:.3f} below min_confidence {min_confidence}"
        else:
            continue
        dropped[(lang, i)] = {
            "language": lang,
            "text": i,
            "detected": row.language,
            "confidence": float(row.confidence),
            "reason": reason,
            "content": content,
        }
    order = {key: n for n, key in enumerate(owners)}
    if parallel:
        for lang, i in list(dropped):
            for other in corpus.languages:
                if (other, i) not in dropped:
                    n = order[(other, i)]
                    dropped[(other, i)] = {
                        "language": other,
                        "text": i,
                        "detected": found.at[n, "language"],
                        "confidence": float(found.at[n, "confidence"]),
                        "reason": f"parallel to a dropped {lang} text",
                        "content": contents[n],
                    }
    kept = {
        lang: [t for i, t in enumerate(corpus[lang]) if (lang, i) not in dropped]
        for lang in corpus.languages
    }
    empty = [lang for lang, texts in kept.items() if not texts]
    if empty:
        raise CorpusError(
            f"no text of {empty} passes the purity filter: check the corpus (or the backend and "
            "min_confidence), or leave these languages out"
        )
    rows = sorted(dropped.values(), key=lambda r: order[(r["language"], r["text"])])
    table = pd.DataFrame(
        {
            column: pd.Series([r[column] for r in rows], dtype=_DTYPES.get(column, object))
            for column in DROPPED_COLUMNS
        }
    )
    return Corpus._derived(kept, corpus.codes), table
