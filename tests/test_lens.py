"""The multilingual logit lens and its prompts."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.readout import layer_logprobs

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
    summary = result.summary(n_boot=200)
    probs = summary[summary.quantity == "probability"]
    assert ((probs["ci_low"] <= probs["mean"] + 1e-12) & (probs["mean"] <= probs["ci_high"] + 1e-12)).all()
    assert list(result.curves().columns) == ["de", "en", "entropy"]
    assert result.select([0, 0]).probability.shape[0] == 2


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
