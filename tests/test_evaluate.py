"""Evaluation: perplexity, choice accuracy and generation against hand computations."""

from __future__ import annotations

import math

import pytest
import tiny
import torch

import tl_multilingual as tlm


def hand_nll(model, ids, first=1):
    """Summed NLL of ids[first:] from one unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    logp = torch.log_softmax(logits.double(), -1)
    return -sum(float(logp[p - 1, ids[p]]) for p in range(first, len(ids))), len(ids) - first


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_perplexity_equals_a_hand_computation(arch, side):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model, padding_side=side)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    table = tlm.perplexity(lm, corpus, batch_size=3).set_index("language")
    per_text = tlm.perplexity(lm, corpus, batch_size=2, per_text=True)
    for lang, texts in tiny.SAMPLE_TEXT.items():
        total, count = 0.0, 0
        for i, ids in enumerate(lm.tokenize(texts)):
            nll, n = hand_nll(model, ids)
            total, count = total + nll, count + n
            row = per_text[(per_text.language == lang) & (per_text.text == i)].iloc[0]
            assert row.tokens == n
            assert row.perplexity == pytest.approx(math.exp(nll / n), rel=1e-4)
        assert table.loc[lang, "tokens"] == count
        assert table.loc[lang, "perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_perplexity_without_bos_never_scores_the_first_token(side):
    """A model that prepends no BOS (Qwen-style ``default_prepend_bos=False``): the first
    text token is predicted by nothing and never counts, also under left padding."""
    model = tiny.bridge("qwen2")
    assert not model.cfg.default_prepend_bos
    lm = tlm.adapt(model, padding_side=side)
    texts = {"en": tiny.SAMPLE_TEXT["en"], "zh": tiny.SAMPLE_TEXT["zh"]}
    table = tlm.perplexity(lm, tlm.Corpus.from_dict(texts), batch_size=3).set_index("language")
    for lang, batch in texts.items():
        total, count = 0.0, 0
        lengths = set()
        for text in batch:
            ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]  # no BOS
            lengths.add(len(ids))
            nll, n = hand_nll(model, ids, first=1)
            total, count = total + nll, count + n
        assert len(lengths) > 1  # rows of different lengths: the batch is padded
        assert table.loc[lang, "tokens"] == count
        assert table.loc[lang, "perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_response_perplexity_counts_only_the_response():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict({"en": [("Question: two plus two?", " Four.")]})
    got = tlm.perplexity(lm, corpus, token_policy="response").iloc[0]
    prompt = lm.tokenize(["Question: two plus two?"])[0]
    answer = lm.tokenize([" Four."], bos=False)[0]
    nll, _ = hand_nll(model, prompt + answer, first=len(prompt))
    assert got.tokens == len(answer)
    assert got.perplexity == pytest.approx(math.exp(nll / len(answer)), rel=1e-4)


def test_perplexity_moves_under_ablation_and_restores_after():
    lm = tlm.adapt(tiny.bridge("qwen2"))
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    before = tlm.perplexity(lm, corpus)
    with tlm.ablate(lm, tlm.NeuronMask.full(lm.n_layers, lm.d_mlp)):
        during = tlm.perplexity(lm, corpus)
    after = tlm.perplexity(lm, corpus)
    assert not during["perplexity"].equals(before["perplexity"])
    assert after["perplexity"].tolist() == pytest.approx(before["perplexity"].tolist())


def test_choice_accuracy_picks_the_most_likely_option():
    model = tiny.bridge("gpt2")
    lm = tlm.adapt(model)
    items = {
        "en": [
            {"prompt": "The cat sleeps on the", "options": [" warm mat.", " market", " 42"], "answer": 0},
            tlm.MultipleChoice("We walked to the", (" market", " mat"), 1),
        ]
    }
    scores = tlm.evaluate.choice_scores(lm, items)
    plain = [(e["prompt"], e["options"]) if isinstance(e, dict) else (e.prompt, e.options) for e in items["en"]]
    for i, (text, options) in enumerate(plain):
        prompt = lm.tokenize([text])[0]
        expected = []
        for option in options:
            ids = prompt + lm.tokenize([option], bos=False)[0]
            nll, _ = hand_nll(model, ids, first=len(prompt))
            expected.append(-nll)
        assert scores.iloc[i]["scores"] == pytest.approx(expected, rel=1e-4)
        assert scores.iloc[i]["predicted"] == max(range(len(expected)), key=expected.__getitem__)
    normalized = tlm.evaluate.choice_scores(lm, items, length_normalize=True)
    for i, (text, options) in enumerate(plain):
        prompt = lm.tokenize([text])[0]
        expected = []
        for option in options:
            answer = lm.tokenize([option], bos=False)[0]
            nll, n = hand_nll(model, prompt + answer, first=len(prompt))
            assert n == len(answer)
            expected.append(-nll / n)
        assert normalized.iloc[i]["scores"] == pytest.approx(expected, rel=1e-4)
    assert normalized.iloc[0]["scores"] != pytest.approx(scores.iloc[0]["scores"], rel=1e-3)
    acc = tlm.choice_accuracy(lm, items).iloc[0]
    assert acc["items"] == 2 and acc["accuracy"] == scores["correct"].mean()
    with pytest.raises(tlm.CorpusError):
        tlm.MultipleChoice("x", ("a",), 3)


def test_greedy_generation_is_deterministic_and_matches_argmax():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    prompts = ["The cat", "Le chat dort sur"]
    out = tlm.generate(lm, prompts, max_new_tokens=5, stop=())
    assert out == tlm.generate(lm, prompts, max_new_tokens=5, stop=(), batch_size=1)
    ids = lm.tokenize([prompts[0]])[0]
    for _ in range(5):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert out[0] == lm.tokenizer.decode(ids[len(lm.tokenize([prompts[0]])[0]) :], skip_special_tokens=True)
    table = tlm.answer_accuracy(
        lm, {"en": [(prompts[0], out[0])], "fr": [(prompts[1], "nonsense")]},
        checker=lambda text, gold: text == gold, max_new_tokens=5, stop=(),
    ).set_index("language")
    assert table.loc["en", "accuracy"] == 1.0 and table.loc["fr", "accuracy"] == 0.0
