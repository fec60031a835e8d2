"""Answers, options and responses are tokenised in context.

With a SentencePiece tokenizer that adds a prefix space, an answer tokenised alone
gets tokens the model never reads after its prompt: the Llama-2 / Mistral-v0.1
pipeline makes ``" True"`` into ``"▁", "▁True"``, a ``Metaspace`` one makes ``"True"``
into ``"▁True"``. Every score here must equal the log-likelihood of the joint text,
computed by hand, and every gold token must be the one the model reads.
"""

from __future__ import annotations

import math

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.causal.attribution import answer_token
from tl_multilingual.model.tokens import in_context

PROMPT = "Question: is the cat on the mat? Answer:"
PROMPT_FR = "Le chat dort sur le tapis chaud. Answer:"


@pytest.fixture(scope="module")
def legacy():
    """Llama-2 / Mistral-v0.1 pipeline: Prepend("▁") + Replace(" ", "▁") normalizer."""
    return tiny.sentencepiece_bridge("legacy")


@pytest.fixture(scope="module")
def metaspace():
    """Newer converters: a Metaspace pre-tokenizer with prepend_scheme "first"."""
    return tiny.sentencepiece_bridge("first")


def pieces(lm, ids):
    return lm.tokenizer.convert_ids_to_tokens(list(ids))


def joint_logprob(model, lm, prompt, answer):
    """log p(answer | prompt) from the joint text ``prompt + answer``, by hand: the
    answer's tokens are those after the prompt's own (checked to be a prefix), a
    trailing space of the prompt going to the answer."""
    alone = lm.tokenize([prompt.rstrip(" ")])[0]
    ids = lm.tokenize([prompt + answer])[0]
    assert ids[: len(alone)] == alone
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(len(alone), len(ids))), len(ids) - len(alone)


def separate_logprob(model, lm, prompt, answer):
    """The old, wrong recipe: the answer tokenised alone and appended."""
    ids = lm.tokenize([prompt])[0]
    n = len(ids)
    ids = ids + lm.tokenize([answer], bos=False)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), -1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(n, len(ids)))


def test_the_tokenizers_show_the_flaw(legacy, metaspace):
    lm = tlm.adapt(legacy)
    assert pieces(lm, lm.tokenize([" True"], bos=False)[0]) == ["▁", "▁True"]
    ms = tlm.adapt(metaspace)
    assert pieces(ms, ms.tokenize(["True"], bos=False)[0]) == ["▁True"]
    assert hasattr(lm.tokenizer, "backend_tokenizer")  # a generic fast tokenizer, no Llama class


def test_the_gold_token_is_the_word_piece_not_the_bare_marker(legacy):
    lm = tlm.adapt(legacy)
    assert pieces(lm, [answer_token(lm, PROMPT, " True")]) == ["▁True"]
    assert pieces(lm, [answer_token(lm, PROMPT, " False")]) == ["▁False"]
    ids, start = in_context(lm, [PROMPT], [" True"])[0]
    assert ids[:start] == lm.tokenize([PROMPT])[0] and pieces(lm, ids[start:]) == ["▁True"]


def test_a_token_straddling_the_boundary_belongs_to_the_answer(metaspace):
    lm = tlm.adapt(metaspace)
    # "Answer: " ends in ":▁" alone, but "Answer: True" reads ":", "▁True".
    ids, start = in_context(lm, ["Answer: "], ["True"])[0]
    assert ids == lm.tokenize(["Answer: True"])[0]
    assert pieces(lm, ids[start:]) == ["▁True"]
    assert pieces(lm, [answer_token(lm, "Answer: ", "True")]) == ["▁True"]


@pytest.mark.parametrize("kind", ["legacy", "metaspace"])
def test_choice_scores_equal_the_joint_text_log_likelihood(kind, legacy, metaspace):
    model = legacy if kind == "legacy" else metaspace
    lm = tlm.adapt(model)
    options = (" True", " False") if kind == "legacy" else ("True", "False")
    prompt = PROMPT if kind == "legacy" else "Question: is the cat on the mat? Answer: "
    items = {"en": [tlm.MultipleChoice(prompt, options, 0)], "fr": [tlm.MultipleChoice(PROMPT_FR, (" True", " False"), 1)]}
    frame = tlm.evaluate.choice_scores(lm, items)
    for row, entries in zip(frame.itertuples(), items.values()):
        entry = entries[0]
        expected = [joint_logprob(model, lm, entry.prompt, o)[0] for o in entry.options]
        assert row.scores == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # Tokenised alone, " True" adds an improbable "▁".
    if kind == "legacy":
        wrong = separate_logprob(model, lm, PROMPT, " True")
        assert abs(wrong - frame.iloc[0]["scores"][0]) > 1.0
    normalised = tlm.evaluate.choice_scores(lm, items, length_normalize=True)
    n_tokens = joint_logprob(model, lm, items["en"][0].prompt, options[0])[1]
    assert normalised.iloc[0]["scores"][0] == pytest.approx(frame.iloc[0]["scores"][0] / n_tokens, rel=1e-6)


def test_paper_b_gold_token_and_item_scores_are_in_context(legacy):
    model = legacy
    lm = tlm.adapt(model)
    items = tlm.ParallelItems.from_records([
        {"id": "a", "text": {"en": PROMPT, "fr": PROMPT_FR}, "answer": {"en": " True", "fr": " False"}},
    ])
    # Effective scores use the unembedding column of the gold token "▁True".
    attr = tlm.attribute(lm, items, method="effective", progress=False)
    gold = answer_token(lm, PROMPT, " True")
    assert pieces(lm, [gold]) == ["▁True"]
    values = tlm.record(lm, lm.pad(lm.tokenize([PROMPT])))[0, -1].float()  # [layer, neuron]
    direction = model.W_U.detach()[:, gold].float()
    for layer in range(lm.n_layers):
        expected = values[layer] * (model.blocks[layer].mlp.W_out.detach().float() @ direction)
        torch.testing.assert_close(attr.scores[0, 0, layer], expected, rtol=1e-4, atol=1e-5)
    # item_correctness: the answer's log-likelihood in the joint text, and "correct"
    # when the model's next token after the prompt is "▁True".
    table = tlm.sharing_experiments.item_correctness(lm, items).set_index("language")
    for lang, prompt, answer in (("en", PROMPT, " True"), ("fr", PROMPT_FR, " False")):
        assert table.loc[lang, "logprob"] == pytest.approx(joint_logprob(model, lm, prompt, answer)[0], rel=1e-5)
        with torch.no_grad():
            predicted = int(model(torch.tensor([lm.tokenize([prompt])[0]]))[0, -1].argmax())
        assert table.loc[lang, "correct"] == (predicted == answer_token(lm, prompt, answer))


def test_item_options_are_scored_by_the_one_implementation(legacy):
    lm = tlm.adapt(legacy)
    items = tlm.ParallelItems.from_records([
        {"id": "a", "text": {"en": PROMPT, "fr": PROMPT_FR},
         "options": {"en": [" True", " False"], "fr": [" False", " True"]}, "label": 1},
    ])
    table = tlm.sharing_experiments.item_correctness(lm, items).set_index("language")
    scores = tlm.evaluate.choice_scores(
        lm, {"en": [tlm.MultipleChoice(PROMPT, (" True", " False"), 1)], "fr": [tlm.MultipleChoice(PROMPT_FR, (" False", " True"), 1)]}
    ).set_index("language")
    for lang in ("en", "fr"):
        assert table.loc[lang, "logprob"] == pytest.approx(scores.loc[lang, "scores"][1], rel=1e-6)
        assert table.loc[lang, "correct"] == scores.loc[lang, "correct"]


def test_response_statistics_and_perplexity_count_the_response_in_context(legacy):
    model = legacy
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict({"en": [(PROMPT, " True")], "fr": [(PROMPT_FR, " False")]})
    stats = tlm.collect_stats(lm, corpus, token_policy="response", progress=False)
    assert stats.token_counts == {"en": 1, "fr": 1}  # "▁True", not "▁", "▁True"
    table = tlm.perplexity(lm, corpus, token_policy="response").set_index("language")
    for lang, prompt, answer in (("en", PROMPT, " True"), ("fr", PROMPT_FR, " False")):
        logprob, n = joint_logprob(model, lm, prompt, answer)
        assert table.loc[lang, "tokens"] == n == 1
        assert table.loc[lang, "perplexity"] == pytest.approx(math.exp(-logprob / n), rel=1e-5)


def test_lens_answer_tokens_are_word_pieces(legacy):
    lm = tlm.adapt(legacy)
    ids = tlm.word_tokens(lm.tokenizer, " True")
    assert "▁True" in pieces(lm, ids)
    assert "▁" not in pieces(lm, ids)


def test_generated_answers_are_decoded_in_context(legacy):
    model = legacy
    lm = tlm.adapt(model)
    true_id = answer_token(lm, PROMPT, " True")
    push = model.W_U.detach()[:, true_id].clone()

    def towards_true(tensor, hook):  # the final residual points at "▁True"'s unembedding
        return push.expand_as(tensor).clone()

    with lm.hooks([(lm.final_hook, towards_true)]):
        out = tlm.generate(lm, [PROMPT], max_new_tokens=2, stop=())
        graded = tlm.answer_accuracy(lm, {"en": [(PROMPT, " True")]}, checker=lambda text, gold: text.startswith(gold),
                                     max_new_tokens=1)
    # Decoded alone, "▁True" loses its space to the decoder's leading-space strip.
    assert lm.tokenizer.decode([true_id, true_id], skip_special_tokens=True) == "True True"
    assert out == [" True True"]
    assert graded.iloc[0]["accuracy"] == 1.0
