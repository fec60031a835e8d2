"""Language identification (Lingua, offline, and any callable) and the corpus purity filter."""

from __future__ import annotations

import pytest
from conftest import require

import tl_multilingual as tlm
from tl_multilingual.errors import CorpusError, LanguageError, TLMultilingualError
from tl_multilingual.inputs.language_id import Lingua, language_of, purity_filter
from tl_multilingual.inputs.languages import same_language

lingua = require("lingua")

CANDIDATES = ["en", "fr", "de", "es", "ru", "zh"]
SENTENCES = {
    "en": "We walked to the market early in the morning.",
    "fr": "Nous avons marché jusqu'au marché tôt le matin.",
    "de": "Wir sind am frühen Morgen zum Markt gegangen.",
    "es": "Caminamos hasta el mercado temprano por la mañana.",
    "ru": "Рано утром мы пошли на рынок.",
    "zh": "我们一大早走到了市场。",
}


@pytest.fixture(scope="module")
def detector():
    return Lingua(CANDIDATES)


def test_lingua_names_the_language_of_real_sentences_in_library_codes(detector):
    found = language_of(list(SENTENCES.values()) + ["", "12345"], backend=detector)
    assert found["language"].tolist()[:6] == list(SENTENCES)
    assert found["language"].tolist()[6:] == [None, None]  # nothing to detect
    assert found["label"].tolist()[:6] == ["eng", "fra", "deu", "spa", "rus", "zho"]
    # The confidence is Lingua's own for the detected language among the candidates.
    own = lingua.LanguageDetectorBuilder.from_languages(
        *(
            lingua.Language.from_iso_code_639_3(getattr(lingua.IsoCode639_3, c.upper()))
            for c in ("eng", "fra", "deu", "spa", "rus", "zho")
        )
    ).build()
    for text, confidence, label in zip(SENTENCES.values(), found["confidence"], found["label"]):
        language = lingua.Language.from_iso_code_639_3(getattr(lingua.IsoCode639_3, label.upper()))
        assert confidence == pytest.approx(
            own.compute_language_confidence(text, language), abs=1e-9
        )
    assert found["confidence"].tolist()[6:] == [0.0, 0.0]
    # The default backend is Lingua over the candidates given.
    assert language_of(SENTENCES["de"], languages=CANDIDATES)["language"].tolist() == ["de"]


def test_lingua_candidates_are_library_codes(detector):
    assert Lingua(["eng_Latn", "fra", "zh-Hant"]).languages == ("en", "fr", "zh-Hant")
    assert language_of(SENTENCES["zh"], backend=Lingua(["en", "zh-Hant"]))["language"].tolist() == [
        "zh"
    ]
    assert language_of("مرحبا بكم في السوق", backend=Lingua(["en", "arb"]))[
        "language"
    ].tolist() == ["ar"]
    with pytest.raises(LanguageError, match="Lingua does not detect 'qu'"):
        Lingua(["en", "qu"])
    with pytest.raises(LanguageError, match="at least two"):
        Lingua(["en"])


def fake(labels):
    """A backend answering ``labels`` in order, recording what it was asked."""
    asked = []

    def backend(texts):
        asked.extend(texts)
        return [labels[len(asked) - len(texts) + i] for i in range(len(texts))]

    backend.asked = asked
    return backend


def test_any_callable_is_a_backend_and_its_labels_become_library_codes():
    backend = fake(["__label__fra_Latn", ("deu", 0.8), None, "und", ("zho_Hans", 0.55), "pt-BR"])
    found = language_of(["a", "b", "c", "d", "e", "f"], backend=backend)
    assert found["language"].tolist() == ["fr", "de", None, None, "zh", "pt-BR"]
    assert found["confidence"].tolist() == [1.0, 0.8, 0.0, 0.0, 0.55, 1.0]
    assert found["label"].tolist() == ["__label__fra_Latn", "deu", None, "und", "zho_Hans", "pt-BR"]
    with pytest.raises(TLMultilingualError, match="gave 1 labels for 2 texts"):
        language_of(["a", "b"], backend=lambda texts: ["en"])
    with pytest.raises(TLMultilingualError, match=r"confidence is in \[0, 1\]"):
        language_of(["a"], backend=lambda texts: [("en", 3.0)])
    with pytest.raises(CorpusError, match="takes strings"):
        language_of(["a", 3], backend=lambda texts: ["en", "en"])


def test_same_language_folds_macrolanguages_and_ignores_scripts():
    assert (
        same_language("zh-Hant", "zh") and same_language("arb", "ar") and same_language("cmn", "zh")
    )
    assert same_language("nb", "no") and same_language("pt-BR", "pt")
    assert not same_language("en", "fr") and not same_language("nn", "da")


def test_the_purity_filter_drops_texts_in_other_languages_and_says_why():
    corpus = tlm.Corpus.from_dict({"en": ["e0", "e1", "e2", "e3"], "fra": ["f0", "f1", "f2"]})
    answers = {
        "e0": ("en", 0.9),
        "e1": ("fr", 0.8),
        "e2": ("en", 0.2),
        "e3": None,
        "f0": ("fr", 0.7),
        "f1": ("fr", 0.6),
        "f2": ("fra_Latn", 0.9),
    }
    backend = fake([answers[t] for t in ["e0", "e1", "e2", "e3", "f0", "f1", "f2"]])
    kept, dropped = purity_filter(corpus, backend=backend, min_confidence=0.5)
    assert backend.asked == ["e0", "e1", "e2", "e3", "f0", "f1", "f2"]
    assert [t.text for t in kept["en"]] == ["e0"] and [t.text for t in kept["fr"]] == [
        "f0",
        "f1",
        "f2",
    ]
    assert kept.languages == ("en", "fr") and kept.codes == {"en": "en", "fr": "fra"}
    assert dropped[["language", "text", "detected"]].values.tolist() == [
        ["en", 1, "fr"],
        ["en", 2, "en"],
        ["en", 3, None],
    ]
    assert dropped["reason"].tolist() == [
        "detected as fr",
        "confidence 0.200 below min_confidence 0.5",
        "no language detected",
    ]
    assert dropped["confidence"].tolist() == [0.8, 0.2, 0.0] and dropped["content"].tolist() == [
        "e1",
        "e2",
        "e3",
    ]


def test_a_parallel_corpus_stays_parallel():
    corpus = tlm.Corpus.from_dict({"en": ["e0", "e1", "e2"], "de": ["d0", "d1", "d2"]})
    labels = ["en", "en", "de", "de", "de", "de"]  # e2 is German: item 2 goes in both languages
    kept, dropped = purity_filter(corpus, backend=fake(labels))
    assert kept.is_parallel and [t.text for t in kept["de"]] == ["d0", "d1"]
    assert dropped[["language", "text"]].values.tolist() == [["en", 2], ["de", 2]]
    assert dropped["reason"].tolist() == ["detected as de", "parallel to a dropped en text"]
    alone, _ = purity_filter(corpus, backend=fake(labels), keep_parallel=False)
    assert [t.text for t in alone["de"]] == ["d0", "d1", "d2"]


def test_the_purity_filter_reads_prompts_responses_or_both():
    corpus = tlm.Corpus.from_dict(
        {"en": [("Question?", "Réponse."), ("Q2", "A2")], "fr": ["x", "y"]}
    )
    for field, first in (
        ("all", "Question?\nRéponse."),
        ("text", "Question?"),
        ("response", "Réponse."),
    ):
        backend = fake(["en", "en", "fr", "fr"])
        purity_filter(corpus, backend=backend, field=field)
        assert backend.asked == [
            first,
            {"all": "Q2\nA2", "text": "Q2", "response": "A2"}[field],
            "x",
            "y",
        ]
    with pytest.raises(CorpusError, match="no text of \\['fr'\\]"):
        purity_filter(corpus, backend=fake(["en"] * 4), keep_parallel=False)
    with pytest.raises(CorpusError, match="field"):
        purity_filter(corpus, backend=fake(["en"] * 4), field="prompt")


def test_the_purity_filter_with_lingua_on_a_mixed_corpus(detector):
    corpus = tlm.Corpus.from_dict(
        {
            "fr": [SENTENCES["fr"], "Le chat dort sur le tapis chaud.", SENTENCES["en"]],
            "ru": [SENTENCES["ru"], "Кошка спит на тёплом коврике.", SENTENCES["zh"]],
        }
    )
    kept, dropped = purity_filter(corpus, backend=detector, keep_parallel=False)
    assert kept["fr"] == corpus["fr"][:2] and kept["ru"] == corpus["ru"][:2]
    assert dropped[["language", "text", "detected"]].values.tolist() == [
        ["fr", 2, "en"],
        ["ru", 2, "zh"],
    ]
