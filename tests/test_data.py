"""Bundled data and the loaders of standard sets."""

from __future__ import annotations

import unicodedata

import pandas as pd
import pytest
from conftest import require

import tl_multilingual as tlm
from tl_multilingual import data


def scripts(text: str) -> set[str]:
    return {unicodedata.name(c).split()[0] for c in text if c.isalpha()}


def test_bundled_parallel_corpus():
    corpus = data.parallel()
    assert len(corpus.languages) >= 10 and corpus.is_parallel
    assert all(len(corpus[lang]) >= 150 for lang in corpus.languages)
    non_latin = [lang for lang in corpus.languages if "LATIN" not in scripts(corpus[lang][0].text)]
    assert len(non_latin) >= 4
    registers = {r["register"] for r in data.parallel_records()}
    assert registers == {"everyday", "reasoning"}
    assert len(data.parallel(["en", "zh"], register="reasoning")["zh"]) >= 70
    items = data.parallel_items(["en", "ja"])
    assert items.languages == ("en", "ja") and len(items) == len(corpus["en"])
    with pytest.raises(tlm.CorpusError):
        data.parallel(["sw"])


def test_bundled_words_work_with_the_prompt_builders():
    words = data.words()
    assert len(words) >= 80 and all(len(w) >= 12 for w in words)
    prompts = tlm.prompts.translation(words[:10], src="fr", tgt="zh", shots=2)
    assert len(prompts) == 10 and prompts[0].answers["en"] == words[0]["en"]
    assert tlm.prompts.cloze(words[:5], language="en", shots=1)[0].text.endswith('Answer: "')


def test_flores_from_local_files_and_datasets(tmp_path):
    (tmp_path / "devtest").mkdir()
    (tmp_path / "devtest" / "eng_Latn.devtest").write_text("One.\nTwo.\n", encoding="utf-8")
    (tmp_path / "devtest" / "zho_Hans.devtest").write_text("一。\n二。\n", encoding="utf-8")
    pd.DataFrame({"text": ["Un.", "Deux."]}).to_parquet(tmp_path / "devtest" / "fra_Latn.parquet")
    corpus = data.flores(tmp_path, ["English", "zh", "fr"])
    assert corpus.languages == ("en", "zh", "fr") and corpus["zh"][1].text == "二。"
    with pytest.raises(tlm.CorpusError, match="ja"):
        data.flores(tmp_path, ["ja"])
    datasets = require("datasets")
    ds = datasets.Dataset.from_dict({"iso_639_3": ["eng", "cmn", "eng"], "iso_15924": ["Latn", "Hans", "Latn"],
                                     "text": ["One.", "一。", "Two."]})
    assert data.flores(ds, ["en", "zh"], limit=1)["zh"][0].text == "一。"  # FLORES+ names Chinese cmn


def test_mgsm_and_xnli_from_local_files(tmp_path):
    (tmp_path / "mgsm_en.tsv").write_text("Tom has 3 apples and buys 4. How many?\t7\nTwo plus two?\t4\n", encoding="utf-8")
    (tmp_path / "mgsm_de.tsv").write_text("Tom hat 3 Äpfel und kauft 4. Wie viele?\t7\nZwei plus zwei?\t4\n", encoding="utf-8")
    items = data.mgsm(tmp_path, ["en", "de"])
    assert len(items) == 2 and items[0].answer("de") == " 7" and items[0].texts["en"].startswith("Question:")
    (tmp_path / "mgsm_fr.tsv").write_text("Une seule question\t1\n", encoding="utf-8")
    with pytest.raises(tlm.CorpusError, match="different numbers"):
        data.mgsm(tmp_path, ["en", "fr"])
    header = "language\tgold_label\tsentence1\tsentence2\tpairID\n"
    rows = ["en\tentailment\tA man sleeps.\tA person rests.\t1", "en\tcontradiction\tIt rains.\tIt is dry.\t2",
            "fr\tentailment\tUn homme dort.\tUne personne se repose.\t1", "fr\tcontradiction\tIl pleut.\tIl fait sec.\t2"]
    path = tmp_path / "xnli.test.tsv"
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    xnli = data.xnli(path, ["en", "fr"])
    assert len(xnli) == 2 and xnli[1].label == 2 and xnli[1].answer("fr") == " False"


def test_flores_reads_each_languages_own_file(tmp_path):
    codes = data.flores_languages()
    for code in codes:
        (tmp_path / f"{code}.devtest").write_text(f"{code}\n", encoding="utf-8")
    corpus = data.flores(tmp_path, codes)
    assert len(corpus.languages) == len(codes)
    for code, key in zip(codes, corpus.languages):
        assert corpus[key][0].text == code, f"{code} read another language's file"
        assert tlm.normalize_language(code) == key
    dari = data.flores(tmp_path, ["prs_Arab", "twi_Latn", "tgl_Latn"])
    assert [t[0].text for t in (dari["prs"], dari["tw"], dari["tl"])] == ["prs_Arab", "twi_Latn", "tgl_Latn"]


def test_flores_names_what_exists_when_a_file_is_missing(tmp_path):
    (tmp_path / "pes_Arab.devtest").write_text("Iranian Persian\n", encoding="utf-8")
    (tmp_path / "aka_Latn.devtest").write_text("Akan\n", encoding="utf-8")
    for asked in ("prs_Arab", "twi_Latn", "tgl_Latn"):
        with pytest.raises(tlm.CorpusError, match=rf"{asked}.*aka_Latn, pes_Arab"):
            data.flores(tmp_path, [asked])
    # A macrolanguage reads the individual language FLORES uses for it; the key stays as asked.
    assert data.flores(tmp_path, ["fa"])["fa"][0].text == "Iranian Persian"


class FakeHub:
    """A stand-in for ``datasets.load_dataset`` that records its calls."""

    def __init__(self, tables):
        self.tables, self.calls = tables, []

    def __call__(self, path, name=None, **kwargs):
        datasets = require("datasets")
        self.calls.append((path, name, kwargs))
        if (path, name) not in self.tables:
            raise ValueError(f"BuilderConfig '{name}' not found")
        return datasets.Dataset.from_dict(self.tables[(path, name)])


def test_hub_loaders_call_load_dataset_as_documented(monkeypatch):
    datasets = require("datasets")
    flores_rows = lambda code, text: {"iso_639_3": [code[:3]], "iso_15924": [code[4:]], "text": [text]}  # noqa: E731
    hub = FakeHub({
        ("openlanguagedata/flores_plus", "prs_Arab"): flores_rows("prs_Arab", "Dari"),
        ("openlanguagedata/flores_plus", "cmn_Hans"): flores_rows("cmn_Hans", "一。"),
        ("juletxara/mgsm", "en"): {"question": ["One plus one?"], "answer": [""], "answer_number": [2]},
        ("juletxara/mgsm", "zh"): {"question": ["一加一？"], "answer": [""], "answer_number": [2]},
        ("facebook/xnli", "en"): {"premise": ["A man sleeps."], "hypothesis": ["A person rests."], "label": [0]},
        ("facebook/xnli", "fr"): {"premise": ["Un homme dort."], "hypothesis": ["Une personne se repose."],
                                  "label": [0]},
    })
    monkeypatch.setattr(datasets, "load_dataset", hub)

    corpus = data.flores("openlanguagedata/flores_plus", ["prs_Arab", "zh"])
    assert corpus["prs"][0].text == "Dari" and corpus["zh"][0].text == "一。"
    assert [c[1] for c in hub.calls] == ["prs_Arab", "zho_Hans", "cmn_Hans"]  # only what was asked for
    assert all(c[2] == {"split": "devtest"} for c in hub.calls)
    with pytest.raises(tlm.CorpusError, match="pes_Arab"):
        data.flores("openlanguagedata/flores_plus", ["pes_Arab"])

    hub.calls.clear()
    items = data.mgsm("juletxara/mgsm", ["en", "zh"])
    assert hub.calls == [("juletxara/mgsm", "en", {"split": "test"}), ("juletxara/mgsm", "zh", {"split": "test"})]
    assert len(items) == 1 and items[0].answer("zh") == " 2"

    hub.calls.clear()
    xnli = data.xnli("facebook/xnli", ["en", "fr"])
    assert hub.calls == [("facebook/xnli", "en", {"split": "test"}), ("facebook/xnli", "fr", {"split": "test"})]
    assert xnli[0].label == 0 and xnli[0].answer("fr") == " True"
