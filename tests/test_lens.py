"""The multilingual logit lens and its prompts."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.model.readout import layer_logprobs
from tl_multilingual.stages.lens import LensResult

WORDS = [
    {"en": "cat", "fr": "chat", "de": "Katze", "zh": "猫", "cloze_en": "A ___ says meow."},
    {"en": "market", "fr": "marché", "de": "Markt", "zh": "市场", "cloze_en": "You buy food at the ___."},
    {"en": "morning", "fr": "matin", "de": "Morgen", "zh": "早上", "cloze_en": "The sun rises in the ___."},
    {"en": "mat", "fr": "tapis", "de": "Matte", "zh": "垫子", "cloze_en": "Wipe your feet on the ___."},
]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma2", "gemma3"])
def test_last_layer_is_the_models_own_next_token_distribution(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    prompts = tlm.prompts.translation(WORDS, src="fr", tgt="zh", shots=2)
    batch = lm.pad(lm.tokenize([p.text for p in prompts]), side="left")
    logp = layer_logprobs(lm, batch)
    with torch.no_grad():
        own = torch.log_softmax(model(batch.input_ids, attention_mask=batch.attention_mask)[:, -1].float(), -1)
    torch.testing.assert_close(logp[:, -1], own, atol=1e-4, rtol=1e-4)
    result = tlm.language_lens(lm, prompts, batch_size=3)
    for i, prompt in enumerate(prompts):
        ids = tlm.word_tokens(lm.tokenizer, prompt.answers["zh"])
        assert result.probability[i, -1, 0].item() == pytest.approx(own[i, ids].exp().sum().item(), rel=1e-4)
        best = own[i, ids].max()
        assert result.rank[i, -1, 0].item() == (own[i] > best).sum().item() + 1
    assert result.entropy[:, -1].tolist() == pytest.approx((-(own.exp() * own).sum(-1)).tolist(), rel=1e-4)


def test_result_frames_and_intervals():
    lm = tlm.adapt(tiny.bridge("llama"))
    result = tlm.language_lens(lm, tlm.prompts.repetition(WORDS, language="de", shots=2))
    assert result.languages == ("de", "en")
    frame = result.to_frame()
    assert len(frame) == 4 * lm.n_layers * 2
    for row in frame.itertuples():
        k = result.languages.index(row.language)
        assert row.probability == result.probability[row.prompt, row.layer, k].item()
        assert row.rank == result.rank[row.prompt, row.layer, k].item()
        assert row.entropy == result.entropy[row.prompt, row.layer].item()
    summary = result.summary(n_boot=200)
    probs = summary[summary.quantity == "probability"]
    assert ((probs["ci_low"] <= probs["mean"] + 1e-12) & (probs["mean"] <= probs["ci_high"] + 1e-12)).all()
    de = probs[probs.language == "de"].sort_values("layer")["mean"].to_numpy()
    assert de == pytest.approx(result.probability[:, :, 0].mean(0).tolist())
    curves = result.curves()
    assert list(curves.columns) == ["de", "en", "entropy"]
    assert curves["en"].tolist() == pytest.approx(result.probability[:, :, 1].mean(0).tolist())
    assert curves["entropy"].tolist() == pytest.approx(result.entropy.mean(0).tolist())
    picked = result.select([2, 0, 2])
    assert torch.equal(picked.probability, result.probability[[2, 0, 2]])
    assert torch.equal(picked.entropy, result.entropy[[2, 0, 2]])
    assert [p.text for p in picked.prompts] == [result.prompts[i].text for i in (2, 0, 2)]


def test_curves_and_frames_skip_prompts_without_an_answer():
    """NaN marks a prompt with no answer in a language: it is left out of that language's
    mean and of the frame, not counted as probability 0."""
    nan = float("nan")
    probability = torch.tensor([[[0.2, nan], [0.4, nan]], [[0.6, 0.1], [0.8, 0.3]]])
    result = LensResult(("fr", "en"), probability, torch.ones_like(probability), torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
                        torch.zeros(2, 2, dtype=torch.long), (None, None))
    curves = result.curves()
    assert curves["fr"].tolist() == pytest.approx([0.4, 0.6])
    assert curves["en"].tolist() == pytest.approx([0.1, 0.3])
    assert curves["entropy"].tolist() == pytest.approx([2.0, 3.0])
    assert len(result.to_frame()) == 6


def test_prompt_builders_follow_wendler_et_al():
    translation = tlm.prompts.translation(WORDS, src="fr", tgt="zh", shots=2)
    assert len(translation) == len(WORDS)
    first = translation[0]
    assert first.text.endswith('Français: "chat" - 中文: "')
    assert first.answers == {"zh": "猫", "en": "cat"}
    assert first.text.count("\n") == 2 and "chat" not in first.text.split("\n")[0]
    repetition = tlm.prompts.repetition(WORDS, language="de", shots=1)
    assert repetition[1].text.endswith('Deutsch: "Markt" - Deutsch: "')
    cloze = tlm.prompts.cloze(WORDS, language="en", shots=1)
    assert cloze[0].text.endswith('A ___ says meow. Answer: "') and cloze[0].answers == {"en": "cat"}
    with pytest.raises(tlm.CorpusError):
        tlm.prompts.cloze(WORDS, language="fr")
    with pytest.raises(tlm.CorpusError):
        tlm.prompts.translation(WORDS[:1], src="fr", tgt="zh")


def test_summary_intervals_are_quantiles_of_prompt_resampled_means():
    import numpy as np

    from tl_multilingual import resample

    rng = np.random.default_rng(0)
    probability = torch.tensor(rng.random((9, 3, 2))).float()
    probability[2, :, 1] = float("nan")  # no answer in the second language
    entropy = torch.tensor(rng.random((9, 3)) * 4).float()
    lens = LensResult(
        ("de", "en"),
        probability,
        torch.ones_like(probability),
        entropy,
        torch.zeros(9, 3, dtype=torch.long),
        tuple([None] * 9),
    )
    summary = lens.summary(ci=0.9, n_boot=500, seed=4)
    draws = resample.draws(9, 500, 4)  # every quantity: the same draws of prompts
    series = {
        ("probability", "de"): probability[:, :, 0].numpy(),
        ("probability", "en"): probability[:, :, 1].numpy(),
        ("entropy", None): entropy.numpy(),
    }
    for (quantity, lang), values in series.items():
        means = np.array([np.nanmean(values[row], 0) for row in draws])  # [n_boot, layer]
        rows = summary[
            (summary["quantity"] == quantity)
            & (summary["language"].isna() if lang is None else summary["language"] == lang)
        ]
        for layer in range(3):
            row = rows[rows["layer"] == layer].iloc[0]
            assert row["mean"] == pytest.approx(np.nanmean(values[:, layer]), rel=1e-6)
            assert row["ci_low"] == pytest.approx(np.nanquantile(means[:, layer], 0.05), rel=1e-6)
            assert row["ci_high"] == pytest.approx(np.nanquantile(means[:, layer], 0.95), rel=1e-6)
