"""Corpus: every way in, language codes, splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import require

import tl_multilingual as tlm
from tl_multilingual.inputs.corpus import Text


def test_language_codes_are_normalised():
    for code in ("en", "eng", "eng_Latn", "English", "english"):
        assert tlm.normalize_language(code) == "en"
    assert tlm.normalize_language("zho_Hans") == "zh"
    assert tlm.normalize_language("zho_Hant") == "zh-Hant"
    assert tlm.normalize_language("arb_Arab") == "arb"  # Standard Arabic, not the macrolanguage
    assert tlm.normalize_language("arb_Arab", fold="macrolanguage") == "ar"
    for bad in ("xx", "", "und", "not a language"):
        with pytest.raises(tlm.LanguageError):
            tlm.normalize_language(bad)
    assert tlm.normalize_language("xx", allow_unknown=True) == "xx"


def test_from_dict_with_plain_texts_and_records():
    corpus = tlm.Corpus.from_dict(
        {"English": ["a", "b"], "fra": [("Q?", " R."), {"prompt": "P", "response": "A"}]}
    )
    assert corpus.languages == ("en", "fr")
    assert corpus["fr"][0] == Text("Q?", " R.")
    assert corpus["French"][1].response == "A"
    assert not corpus.has_responses
    assert corpus.is_parallel and len(corpus) == 4
    with pytest.raises(tlm.CorpusError, match="twice"):
        tlm.Corpus.from_dict({"en": ["a"], "eng": ["b"]})
    with pytest.raises(tlm.LanguageError):
        tlm.Corpus.from_dict({"xyzzy": ["a"]})
    assert tlm.Corpus.from_dict({"xx": ["a"]}, allow_unknown=True).languages == ("xx",)
    with pytest.raises(tlm.CorpusError):
        tlm.Corpus.from_dict({"en": "one string"})
    with pytest.raises(tlm.CorpusError):
        tlm.Corpus.from_dict({"en": [3]})


def test_from_frames_long_and_wide():
    long = pd.DataFrame({"language": ["en", "fr", "en"], "text": ["a", "b", "c"]})
    assert tlm.Corpus.from_frame(long) == tlm.Corpus.from_dict({"en": ["a", "c"], "fr": ["b"]})
    wide = pd.DataFrame({"eng_Latn": ["a", "c"], "fra_Latn": ["b", None]})
    assert tlm.Corpus.from_frame(wide, language=None) == tlm.Corpus.from_dict({"en": ["a", "c"], "fr": ["b"]})
    with pytest.raises(tlm.CorpusError, match="column"):
        tlm.Corpus.from_frame(long, text="sentence")


def test_from_json_jsonl_and_text_files(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"en": ["a"], "de": ["b"]}))
    assert tlm.Corpus.from_json(tmp_path / "c.json").languages == ("en", "de")
    records = [{"language": "fr", "text": "x", "response": "y"}, {"language": "fr", "text": "z", "response": "w"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    corpus = tlm.Corpus.from_json(tmp_path / "c.jsonl")
    assert corpus.has_responses and corpus["fr"][1] == Text("z", "w")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(tlm.CorpusError, match="JSON"):
        tlm.Corpus.from_json(tmp_path / "bad.json")
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "ru.txt").write_text("один\n\nдва\n", encoding="utf-8")
    (folder / "ja.txt").write_text("一\n", encoding="utf-8")
    corpus = tlm.Corpus.from_text_files(folder)
    assert corpus.languages == ("ja", "ru") and corpus["ru"][1].text == "два"
    assert tlm.Corpus.from_text_files({"ru": folder / "ru.txt"})["ru"][0].text == "один"


def test_from_hugging_face_dataset():
    datasets = require("datasets")
    ds = datasets.Dataset.from_dict({"lang": ["en", "zh"], "sentence": ["hi", "你好"]})
    corpus = tlm.Corpus.from_hf(ds, language="lang", text="sentence")
    assert corpus.languages == ("en", "zh")


def test_fingerprint_split_head_select():
    corpus = tlm.Corpus.from_dict({"en": list("abcdefghij"), "fr": list("ABCDEFGHIJ")})
    assert corpus.fingerprint() == tlm.Corpus.from_dict({"en": list("abcdefghij"), "fr": list("ABCDEFGHIJ")}).fingerprint()
    assert corpus.fingerprint() != corpus.head(3).fingerprint()
    kept, held = corpus.split(0.3, seed=1)
    assert [len(held[l]) for l in held.languages] == [3, 3]
    # Parallel corpora keep their alignment.
    assert [t.text.upper() for t in held["en"]] == [t.text for t in held["fr"]]
    assert corpus.select(["fr"]).languages == ("fr",)
    assert len(corpus.to_frame()) == 20
