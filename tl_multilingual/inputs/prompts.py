"""Prompts for the multilingual logit lens: the three tasks of Wendler et al. (2024).

Every prompt ends right before the word the model should produce, and names the
words to track in each language (the target-language answer, and English, the
latent language the paper looks for):

- [`translation()`][tl_multilingual.inputs.prompts.translation]: few-shot word translation, ``Français: "fleur" - 中文: "花"``;
- [`repetition()`][tl_multilingual.inputs.prompts.repetition]: the same format with source = target;
- [`cloze()`][tl_multilingual.inputs.prompts.cloze]: few-shot fill-in-the-blank, ``A "___" ... Answer: "ball".``

Words are records mapping language tags to one word each, e.g. the bundled list from
[`tl_multilingual.data.words()`][tl_multilingual.data.words] or ``[{"en": "cat", "fr": "chat", ...}, ...]``.
Cloze prompts use each record's ``cloze_<language>`` sentence (with ``___``).
Build your own [`LensPrompt`][tl_multilingual.inputs.prompts.LensPrompt] objects for any other task.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorpusError
from .languages import normalize_language

__all__ = ["LensPrompt", "translation", "repetition", "cloze", "language_label"]

# How each language names itself in the prompts (Wendler et al. use native names).
_LABELS = {
    "en": "English", "fr": "Français", "de": "Deutsch", "es": "Español", "it": "Italiano",
    "pt": "Português", "nl": "Nederlands", "ru": "Русский", "uk": "Українська", "zh": "中文",
    "ja": "日本語", "ko": "한국어", "ar": "العربية", "hi": "हिन्दी", "bn": "বাংলা", "th": "ไทย",
    "vi": "Tiếng Việt", "id": "Bahasa Indonesia", "sw": "Kiswahili", "tr": "Türkçe", "fi": "Suomi",
    "et": "Eesti",
}


def language_label(language: str) -> str:
    """The name a prompt gives a language: its own name where known."""
    import langcodes

    if language in _LABELS:
        return _LABELS[language]
    try:
        return langcodes.Language.get(language).autonym().capitalize()
    except (LookupError, ValueError):
        return language


@dataclass(frozen=True)
class LensPrompt:
    """A prompt ending right before the answer, and the answer word in each tracked
    language (e.g. ``{"zh": "花", "en": "flower"}``)."""

    text: str
    answers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        answers = {normalize_language(k, allow_unknown=True): v for k, v in dict(self.answers).items()}
        object.__setattr__(self, "answers", answers)
        if not all(isinstance(v, str) and v.strip() for v in answers.values()):
            raise CorpusError(f"every answer must be a non-empty word: {answers}")


def _records(words: Sequence[Mapping[str, Any]] | Any, needed: Sequence[str]) -> list[dict[str, str]]:
    if hasattr(words, "to_dict"):
        words = words.to_dict("records")
    out = []
    for record in words:
        record = {normalize_language(k, allow_unknown=True) if not k.startswith("cloze_") and k != "concept" else k: v
                  for k, v in dict(record).items()}
        if all(isinstance(record.get(lang), str) and record[lang] for lang in needed):
            out.append(record)
    if len(out) < 2:
        raise CorpusError(f"need at least two words with all of {list(needed)}, found {len(out)}")
    return out


def _few_shot(records: list[dict[str, str]], shots: int, seed: int, line, query) -> list[tuple[str, dict[str, str]]]:
    rng = random.Random(seed)
    built = []
    for i, record in enumerate(records):
        others = [r for j, r in enumerate(records) if j != i]
        examples = rng.sample(others, min(shots, len(others)))
        built.append(("\n".join([line(r) for r in examples] + [query(record)]), record))
    return built


def translation(
    words: Sequence[Mapping[str, Any]], *, src: str, tgt: str, shots: int = 4, seed: int = 0,
    track: Sequence[str] = ("en",),
) -> list[LensPrompt]:
    """Few-shot translation prompts from ``src`` to ``tgt``, one per word; answers in
    ``tgt`` and in every language of ``track`` (English by default)."""
    src, tgt = normalize_language(src), normalize_language(tgt)
    tracked = [normalize_language(t) for t in track]
    records = _records(words, [src, tgt, *tracked])
    s, t = language_label(src), language_label(tgt)
    pairs = _few_shot(
        records, shots, seed,
        line=lambda r: f'{s}: "{r[src]}" - {t}: "{r[tgt]}"',
        query=lambda r: f'{s}: "{r[src]}" - {t}: "',
    )
    return [LensPrompt(text, {tgt: r[tgt], **{k: r[k] for k in tracked}}) for text, r in pairs]


def repetition(
    words: Sequence[Mapping[str, Any]], *, language: str, shots: int = 4, seed: int = 0,
    track: Sequence[str] = ("en",),
) -> list[LensPrompt]:
    """Few-shot repetition prompts: the model repeats a word of ``language``."""
    lang = normalize_language(language)
    tracked = [normalize_language(t) for t in track]
    records = _records(words, [lang, *tracked])
    name = language_label(lang)
    pairs = _few_shot(
        records, shots, seed,
        line=lambda r: f'{name}: "{r[lang]}" - {name}: "{r[lang]}"',
        query=lambda r: f'{name}: "{r[lang]}" - {name}: "',
    )
    return [LensPrompt(text, {lang: r[lang], **{k: r[k] for k in tracked}}) for text, r in pairs]


def cloze(
    words: Sequence[Mapping[str, Any]], *, language: str, shots: int = 2, seed: int = 0,
    track: Sequence[str] = ("en",), answer_label: str = "Answer",
) -> list[LensPrompt]:
    """Few-shot cloze prompts from each word's ``cloze_<language>`` sentence."""
    lang = normalize_language(language)
    tracked = [normalize_language(t) for t in track]
    key = f"cloze_{lang}"
    records = [r for r in _records(words, [lang, *tracked]) if isinstance(r.get(key), str) and "___" in r[key]]
    if len(records) < 2:
        raise CorpusError(f"need at least two words with a {key!r} sentence containing '___'")
    pairs = _few_shot(
        records, shots, seed,
        line=lambda r: f'{r[key]} {answer_label}: "{r[lang]}".',
        query=lambda r: f'{r[key]} {answer_label}: "',
    )
    return [LensPrompt(text, {lang: r[lang], **{k: r[k] for k in tracked}}) for text, r in pairs]
