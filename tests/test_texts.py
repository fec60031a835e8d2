"""Texts a model cannot read: languages with no token, and texts the tokenizer refuses."""

from __future__ import annotations

import pytest

import tl_multilingual as tlm


@pytest.fixture(scope="module")
def lm():
    return tlm.adapt(tlm.models.tiny("gpt2"))


EMPTY = {"en": ["", ""], "fr": ["Le chat dort."]}
BROKEN = {"en": ["The cat sleeps."], "fr": ["Le chat dort.", "un texte \ud800 cassé"]}


@pytest.mark.parametrize(
    "call",
    [
        lambda lm, c: tlm.perplexity(lm, c),
        lambda lm, c: tlm.evaluate.text_nll(lm, c),
        lambda lm, c: tlm.collect_stats(lm, c, progress=False),
    ],
    ids=["perplexity", "text_nll", "collect_stats"],
)
def test_a_language_without_tokens_is_refused_where_first_seen(lm, call):
    with pytest.raises(tlm.CorpusError, match="'en' give no"):
        call(lm, tlm.Corpus.from_dict(EMPTY))


@pytest.mark.parametrize(
    "call",
    [
        lambda lm, c: tlm.perplexity(lm, c),
        lambda lm, c: tlm.collect_stats(lm, c, progress=False),
        lambda lm, c: tlm.answer_accuracy(lm, {lang: [(t.text, 1) for t in c[lang]] for lang in c.languages},
                                          lambda out, gold: True, max_new_tokens=1),
        lambda lm, c: tlm.choice_accuracy(lm, {lang: [tlm.MultipleChoice(t.text, (" a", " b"), 0) for t in c[lang]]
                                               for lang in c.languages}),
    ],
    ids=["perplexity", "collect_stats", "answer_accuracy", "choice_accuracy"],
)
def test_a_text_the_tokenizer_refuses_names_language_and_index(lm, call):
    with pytest.raises(tlm.CorpusError, match=r"language 'fr', text \d+ cannot be tokenised") as info:
        call(lm, tlm.Corpus.from_dict(BROKEN))
    assert info.value.language == "fr"


def test_items_without_entries_and_refused_prompts(lm):
    with pytest.raises(tlm.CorpusError, match="'de' give no items"):
        tlm.answer_accuracy(lm, {"en": [("Two plus two is", " 4")], "de": []}, lambda out, gold: True)
    with pytest.raises(tlm.CorpusError, match=r"text 9 cannot be tokenised") as info:
        tlm.generate(lm, ["One"] * 9 + ["\ud800"], batch_size=4, max_new_tokens=1)
    assert info.value.index == 9
    with pytest.raises(tlm.CorpusError, match=r"text 1 cannot be tokenised"):
        lm.tokenize(["fine", "\ud800"])
