"""Language codes: one canonical key per language, and nothing lost on the way.

``en``, ``eng``, ``eng_Latn`` (FLORES), ``en-Latn``, ``English`` and ``english`` all
mean English and become the key ``en``. The rules (see docs/concepts.md, "Language
codes"):

- The language subtag is any ISO 639-1 or ISO 639-3 code registered with IANA (every
  ISO 639-3 language is). A three-letter code with an exact ISO 639-1 equivalent is
  written with the two letters (``eng`` -> ``en``, ``twi`` -> ``tw``, ``tgl`` ->
  ``tl``); ISO 639-2/B codes are read as their equivalents (``ger`` -> ``de``), and
  the ISO 639-1 codes withdrawn by ISO as their replacements (``iw`` -> ``he``).
  Nothing else changes the language: individual languages are never merged into
  their macrolanguage (``prs`` Dari, ``pes`` Iranian Persian and ``fa`` Persian are
  three keys), and no locale alias replaces one language by another (``twi`` is not
  read as Akan, ``tgl`` not as Filipino).
- An ISO 15924 script is kept, unless it is the language's usual one
  (``zho_Hans`` -> ``zh``, ``zho_Hant`` -> ``zh-Hant``, ``arb_Latn`` -> ``arb-Latn``).
- An ISO 3166 region is kept (``zh-TW``, ``pt-BR``).
- Variants, extensions and private-use parts (``deu_1996``, ``en-x-mine``) are dropped
  with a [`TLMultilingualWarning`][tl_multilingual.errors.TLMultilingualWarning] saying what was read as what, unless ``keep_variants``.
- Folding is explicit: ``fold="macrolanguage"`` reads an individual language as its
  macrolanguage (``arb`` -> ``ar``, ``cmn`` -> ``zh``, ``nb`` -> ``no``, ``prs`` ->
  ``fa``), ``fold="region"`` replaces a region by the script it implies or drops it
  (``zh-TW`` -> ``zh-Hant``, ``pt-BR`` -> ``pt``), ``fold=True`` does both.

Unknown codes (not registered, reserved for local use, ``und``, ``mul``...) raise
[`LanguageError`][tl_multilingual.errors.LanguageError]. Data: `langcodes` and
`language_data` (IANA subtag registry, CLDR likely subtags).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from functools import lru_cache
from typing import Literal

import langcodes
from langcodes import data_dicts

from ..errors import LanguageError, warn

__all__ = ["normalize_language", "language_name", "flores_code", "macrolanguage", "usual_script", "same_language"]

Fold = bool | Literal["macrolanguage", "region"] | Collection[str]
FOLDS = ("macrolanguage", "region")

# Three-letter ISO 639-2/T and /B codes with an exact ISO 639-1 equivalent.
# (The locale data also maps a few tags such as ``fa-AF`` to ISO 639-3 codes such as
# ``prs``: those are not equivalences and are left out.)
_ALPHA2_TO_ALPHA3 = {a2: a3 for a2, a3 in data_dicts.LANGUAGE_ALPHA3.items() if re.fullmatch(r"[a-z]{2}", a2)}
_ALPHA3_TO_ALPHA2 = {
    **{a3: a2 for a2, a3 in data_dicts.LANGUAGE_ALPHA3_BIBLIOGRAPHIC.items() if re.fullmatch(r"[a-z]{2}", a2)},
    **{a3: a2 for a2, a3 in _ALPHA2_TO_ALPHA3.items()},
}
# ISO 639-1 codes that ISO itself withdrew in favour of another code for the same language.
_WITHDRAWN = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}
_NOT_A_LANGUAGE = {"und", "mul", "zxx", "mis"}
_LOCAL_USE = re.compile(r"q[a-t][a-z]")  # qaa..qtz, reserved for local use


def _subtags(tag: str) -> langcodes.Language | None:
    """The parsed subtags of a BCP-47 tag, as written (no alias is applied)."""
    try:
        lang = langcodes.Language.get(tag, normalize=False)
    except (LookupError, ValueError):
        return None
    if lang.language is None or not re.fullmatch(r"[a-z]{2,3}", lang.language):
        return None
    return lang


def _language_subtag(code: str) -> str | None:
    code = _ALPHA3_TO_ALPHA2.get(code, code)
    code = _WITHDRAWN.get(code, code)
    if code in _NOT_A_LANGUAGE or _LOCAL_USE.fullmatch(code):
        return None
    return code if langcodes.Language.make(language=code).is_valid() else None


def macrolanguage(language: str) -> str | None:
    """The ISO 639-3 macrolanguage of an individual language subtag (``arb`` -> ``ar``),
    or None."""
    return data_dicts.MACROLANGUAGES.get(language)


def usual_script(language: str) -> str | None:
    """The script a language is usually written in (CLDR likely subtags; for an
    individual language without its own entry, its macrolanguage's), or None."""
    for code in (language, macrolanguage(language)):
        likely = data_dicts.LIKELY_SUBTAGS.get(code or "")
        if likely:
            return langcodes.Language.get(likely, normalize=False).script
    return None


@lru_cache(maxsize=4096)
def _resolve(code: str, fold: frozenset[str], keep_variants: bool) -> tuple[str, str] | None:
    """``(key, dropped)`` for a code or name, or None when it names no language."""
    text = code.strip()
    if not text:
        return None
    lang = _subtags(text.replace("_", "-"))
    language = _language_subtag(lang.language) if lang is not None else None
    if language is None:  # a name ("English", "Egyptian Arabic")?
        try:
            found = langcodes.find(text)
        except LookupError:
            return None
        lang = _subtags(str(found))
        language = _language_subtag(lang.language) if lang is not None else None
        if language is None:
            return None
    script, region = lang.script, lang.territory
    if script is not None and not langcodes.Language.make(language=language, script=script).is_valid():
        return None
    if region is not None and not langcodes.Language.make(language=language, territory=region).is_valid():
        return None
    extra = [*(lang.variants or []), *(lang.extensions or []), *([lang.private] if lang.private else [])]
    dropped = "" if keep_variants else "-".join(extra)
    if "macrolanguage" in fold and macrolanguage(language):
        language = macrolanguage(language)
    if "region" in fold and region is not None:
        likely = data_dicts.LIKELY_SUBTAGS.get(f"{language}-{region}")
        implied = langcodes.Language.get(likely, normalize=False).script if likely else None
        script = script or implied
        region = None
    if script is not None and script == usual_script(language):
        script = None
    parts = [language, script, region, *(extra if keep_variants else [])]
    return "-".join(p for p in parts if p), dropped


def _folds(fold: Fold) -> frozenset[str]:
    if fold is True:
        return frozenset(FOLDS)
    if fold is False or fold is None:
        return frozenset()
    chosen = frozenset([fold] if isinstance(fold, str) else fold)
    unknown = chosen - set(FOLDS)
    if unknown:
        raise LanguageError(f"fold takes {FOLDS} (or True for both), got {sorted(unknown)}")
    return chosen


def normalize_language(
    code: str, *, allow_unknown: bool = False, fold: Fold = False, keep_variants: bool = False
) -> str:
    """Return the canonical key of a language code or name (rules in the module docstring).

    Args:
        code: an ISO 639-1/639-3 code with optional ISO 15924 script and ISO 3166
            region (``arz_Arab``, ``pt-BR``), a FLORES code (``zho_Hans``), a BCP-47
            tag, or an English (or native) language name.
        allow_unknown: keep an unresolvable code as given (stripped) instead of failing.
        fold: ``"macrolanguage"``, ``"region"``, both (``True``) or neither (default).
        keep_variants: keep variant, extension and private-use subtags in the key
            instead of dropping them with a warning.

    Returns:
        The key: ``en``, ``zh-Hant``, ``prs``, ``zh-TW``...

    Raises:
        LanguageError: the code is not a known language and ``allow_unknown`` is False.
    """
    if not isinstance(code, str):
        raise LanguageError(f"language codes are strings, got {type(code).__name__}: {code!r}")
    resolved = _resolve(code, _folds(fold), keep_variants)
    if resolved is not None:
        key, dropped = resolved
        if dropped:
            warn(f"language code {code!r} read as {key!r}: {dropped!r} dropped (keep_variants=True keeps it)")
        return key
    if allow_unknown and code.strip():
        return code.strip()
    raise LanguageError(
        f"unknown language {code!r}: use an ISO 639 code ('en', 'eng', 'arz'), optionally with a script "
        "and region ('arz_Arab', 'zh-TW'), a FLORES-200 code ('eng_Latn') or an English name ('English')"
    )


def flores_code(key: str) -> str:
    """The FLORES-200 / FLORES+ code (``<ISO 639-3>_<script>``) of a canonical key,
    without changing the language: ``en`` -> ``eng_Latn``, ``zh-Hant`` -> ``zho_Hant``,
    ``prs`` -> ``prs_Arab``.

    Raises:
        LanguageError: the key is not a language, or its script is unknown.
    """
    lang = _subtags(normalize_language(key, keep_variants=True))
    if lang is None:
        raise LanguageError(f"{key!r} is not a language code")
    alpha3 = _ALPHA2_TO_ALPHA3.get(lang.language, lang.language)
    script = lang.script or usual_script(lang.language)
    if script is None:
        raise LanguageError(f"the usual script of {key!r} is unknown: give it, e.g. '{alpha3}_Latn'")
    return f"{alpha3}_{script}"


def language_name(code: str) -> str:
    """English display name of a canonical tag (the tag itself when unknown)."""
    try:
        name = langcodes.Language.get(code, normalize=False).display_name()
    except (LookupError, ValueError):
        return code
    return code if name.startswith("Unknown language") else name


def same_language(expected: str, detected: str) -> bool:
    """Whether two codes name the same language for language identification: their
    language subtags agree once individual languages are read as their macrolanguage
    (``arb`` and ``ar``, ``cmn`` and ``zh``, ``nb`` and ``no``). Scripts and regions are
    not compared (``zh-Hant`` and ``zh``, ``pt-BR`` and ``pt`` agree), since language
    identifiers rarely report them.

    Raises:
        LanguageError: either code is not a known language.
    """
    first, second = (normalize_language(code, fold="macrolanguage").split("-")[0] for code in (expected, detected))
    return first == second
