"""Language codes: one canonical tag per language.

``en``, ``eng``, ``eng_Latn`` (FLORES), ``English`` and ``english`` all mean English.
Canonical tags are the shortest BCP-47 tags (ISO 639-1 where one exists), with the
script kept only when it is not the language's usual one (``zho_Hans`` -> ``zh``,
``zho_Hant`` -> ``zh-Hant``). Resolution is done by :mod:`langcodes`.
"""

from __future__ import annotations

from functools import lru_cache

import langcodes

from .errors import LanguageError

__all__ = ["normalize_language", "language_name"]


@lru_cache(maxsize=4096)
def _resolve(code: str) -> str | None:
    text = code.strip()
    if not text:
        return None
    tag = text.replace("_", "-")
    try:
        lang = langcodes.Language.get(tag)
        if not (lang.is_valid() and lang.language and lang.has_name_data()):
            raise LookupError(tag)
    except (LookupError, ValueError):
        try:
            lang = langcodes.find(text)
        except LookupError:
            return None
    if lang.language in (None, "und", "mul", "zxx"):
        return None
    lang = langcodes.Language.get(langcodes.standardize_tag(str(lang), macro=True))
    usual_script = langcodes.Language.get(lang.language).maximize().script
    if lang.script is not None and lang.script == usual_script:
        lang = lang.update_dict({"script": None})
    return str(lang)


def normalize_language(code: str, *, allow_unknown: bool = False) -> str:
    """Return the canonical tag of a language code or name.

    Args:
        code: an ISO 639-1/639-3 code, a FLORES code (``zho_Hans``), a BCP-47 tag
            or an English (or native) language name.
        allow_unknown: keep an unresolvable code as given (stripped) instead of failing.

    Raises:
        LanguageError: the code is not a known language and ``allow_unknown`` is False.
    """
    if not isinstance(code, str):
        raise LanguageError(f"language codes are strings, got {type(code).__name__}: {code!r}")
    canonical = _resolve(code)
    if canonical is not None:
        return canonical
    if allow_unknown and code.strip():
        return code.strip()
    raise LanguageError(
        f"unknown language {code!r}: use an ISO 639 code ('en', 'eng'), a FLORES code "
        "('eng_Latn') or an English name ('English'), or pass allow_unknown=True"
    )


def language_name(code: str) -> str:
    """English display name of a canonical tag (the tag itself when unknown)."""
    try:
        name = langcodes.Language.get(code).display_name()
    except (LookupError, ValueError):
        return code
    return code if name.startswith("Unknown language") else name
