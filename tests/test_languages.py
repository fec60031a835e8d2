"""Language codes: every standard code accepted, nothing merged, folding only on request."""

from __future__ import annotations

import warnings

import pytest

import tl_multilingual as tlm
from tl_multilingual import data
from tl_multilingual.inputs.languages import flores_code


@pytest.mark.parametrize("code", ["arz_Arab", "ary_Arab", "acm_Arab", "aeb_Arab", "ars_Arab", "pbt_Arab"])
def test_flores_codes_of_individual_languages_are_accepted(code):
    assert tlm.normalize_language(code) == code.split("_")[0]


def test_every_flores_200_code_round_trips():
    codes = data.flores_languages()
    assert len(codes) == 204 and len(set(codes)) == 204
    keys = [tlm.normalize_language(code) for code in codes]
    assert len(set(keys)) == len(codes)  # no two FLORES languages share a key
    for code, key in zip(codes, keys):
        assert tlm.normalize_language(key) == key  # keys are fixed points
        assert flores_code(key) == code  # and lead back to their own file name


def test_no_lossy_alias_changes_the_language():
    assert tlm.normalize_language("prs_Arab") == "prs"  # Dari, not Iranian Persian
    assert tlm.normalize_language("pes_Arab") == "pes"
    assert tlm.normalize_language("twi_Latn") == "tw"  # Twi, not Akan
    assert tlm.normalize_language("aka_Latn") == "ak"
    assert tlm.normalize_language("tgl_Latn") == "tl"  # Tagalog, not Filipino
    assert tlm.normalize_language("fil") == "fil"
    assert tlm.normalize_language("cmn_Hans") == "cmn"
    assert tlm.normalize_language("ger") == tlm.normalize_language("deu") == "de"  # same language, B and T codes


def test_regions_and_macrolanguages_stay_apart_unless_folded():
    assert tlm.normalize_language("zh-TW") == "zh-TW" and tlm.normalize_language("zh-Hant") == "zh-Hant"
    assert tlm.normalize_language("nb") == "nb" and tlm.normalize_language("no") == "no"
    assert tlm.normalize_language("zh-TW", fold="region") == "zh-Hant"
    assert tlm.normalize_language("pt-BR", fold="region") == "pt"
    assert tlm.normalize_language("nb", fold="macrolanguage") == "no"
    assert tlm.normalize_language("prs_Arab", fold=True) == "fa"
    with pytest.raises(tlm.LanguageError, match="fold"):
        tlm.normalize_language("en", fold="script")
    corpus = tlm.Corpus.from_dict({"zh-TW": ["a"], "nb": ["b"], "en": ["c"]})
    assert corpus.languages == ("zh-TW", "nb", "en")
    assert corpus.folded().languages == ("zh-Hant", "no", "en")
    with pytest.raises(tlm.CorpusError, match="fold into"):
        tlm.Corpus.from_dict({"nb": ["a"], "nn": ["b"]}).folded("macrolanguage")


def test_variants_are_dropped_and_the_caller_told():
    with pytest.warns(UserWarning, match="'deu_1996' read as 'de'"):
        assert tlm.normalize_language("deu_1996") == "de"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tlm.normalize_language("deu_1996", keep_variants=True) == "de-1996"
    with pytest.warns(UserWarning):
        corpus = tlm.Corpus.from_dict({"deu_1996": ["Ein Satz."], "en": ["A sentence."]})
    assert corpus.languages == ("de", "en") and corpus.codes == {"de": "deu_1996", "en": "en"}


@pytest.mark.parametrize("bad", ["xx", "qaa", "und", "zz_Latn", "en-Xyzw", "x-private", "not a language"])
def test_unknown_codes_are_refused(bad):
    with pytest.raises(tlm.LanguageError, match="unknown language"):
        tlm.normalize_language(bad)


@pytest.mark.parametrize(
    "code, key, folded",
    [
        ("zh-Hans-CN", "zh-CN", "zh"),  # the usual script goes, the region stays
        ("zh-Hant-TW", "zh-Hant-TW", "zh-Hant"),
        ("sr-Cyrl-RS", "sr-RS", "sr"),
        ("sr-Latn-RS", "sr-Latn-RS", "sr-Latn"),
        ("en-Latn-US", "en-US", "en"),
        ("pt-Latn-BR", "pt-BR", "pt"),
    ],
)
def test_a_usual_script_is_dropped_also_before_a_region(code, key, folded):
    assert tlm.normalize_language(code) == key
    assert tlm.normalize_language(code, fold="region") == folded
    assert tlm.normalize_language(key) == key  # keys are fixed points


@pytest.mark.parametrize(
    "withdrawn, current, region",
    [
        ("iw", "he", "IL"),
        ("in", "id", "ID"),
        ("ji", "yi", "US"),
        ("jw", "jv", "ID"),
        ("mo", "ro", "MD"),
    ],
)
def test_withdrawn_iso_639_1_codes_read_as_their_replacements(withdrawn, current, region):
    assert tlm.normalize_language(withdrawn) == current
    assert tlm.normalize_language(f"{withdrawn}-{region}") == f"{current}-{region}"
