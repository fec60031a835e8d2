"""The readout invariant: the library's head equals the model's own output, for every
accepted architecture, and a head it cannot reproduce is refused."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.errors import UnsupportedModelError
from tl_multilingual.model import readout

ACCEPTED = [arch for arch in tlm.models.TINY_ARCHITECTURES if arch != "mixtral"]  # mixture-of-experts is refused
TEXTS = ["The cat sat on the mat.", "A dog ran to the market this morning."]


@pytest.mark.parametrize("arch", ACCEPTED)
def test_last_lens_layer_and_perplexity_equal_the_models_own_logits(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    sequences = lm.tokenize(TEXTS)
    batch = lm.pad(sequences, side="left")
    with torch.no_grad():
        own = model(batch.input_ids, attention_mask=batch.attention_mask).float()
    logp = readout.layer_logprobs(lm, batch)
    torch.testing.assert_close(logp[:, -1], torch.log_softmax(own[:, -1], -1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(readout.last_logits(lm, batch).float(), own[:, -1], atol=1e-4, rtol=1e-4)
    # Perplexity of each text, by hand from the model's own logits on the unpadded text.
    expected = []
    for seq in sequences:
        ids = torch.tensor([seq])
        with torch.no_grad():
            logits = model(ids).float()[0]
        nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum")
        expected.append(float(torch.exp(nll / (len(seq) - 1))))
    frame = tlm.perplexity(lm, tlm.Corpus.from_dict({"en": TEXTS}), per_text=True)
    assert frame["perplexity"].tolist() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("arch", ["cohere", "granite"])
def test_scaled_heads_change_the_numbers(arch):
    """The final-logit transform is not a no-op on these families: dropping it moves the
    readout away from the model's own logits (so the test above checks the transform)."""
    lm = tlm.adapt(tiny.bridge(arch))
    batch = lm.pad(lm.tokenize(TEXTS[:1]))
    with torch.no_grad():
        own = lm.call(batch)[0, -1].float()
    fin = {}
    lm.forward(batch, fwd_hooks=[(lm.final_hook, lambda t, hook: fin.setdefault("r", t))], logits=False,
               stop_at=lm.final_hook)
    bare = lm.model.unembed(lm.model.ln_final(fin["r"]))[0, -1].float()
    assert (bare - own).abs().max() > 0.1


def test_a_head_the_library_cannot_reproduce_is_refused(monkeypatch):
    monkeypatch.setattr(readout, "_final_transform", lambda model: (lambda logits: logits))
    lm = tlm.adapt(tiny.bridge("cohere"))
    with pytest.raises(UnsupportedModelError, match="output head"):
        tlm.perplexity(lm, tlm.Corpus.from_dict({"en": TEXTS}))
    with pytest.raises(UnsupportedModelError, match="output head"):
        tlm.language_lens(lm, tlm.prompts.translation([{"en": "cat", "fr": "chat"}, {"en": "dog", "fr": "chien"}],
                                                      src="fr", tgt="en", shots=1))
    # Statistics never use the head: the model can still be studied there.
    stats = tlm.collect_stats(lm, tlm.Corpus.from_dict({"en": TEXTS, "fr": ["Le chat dort."]}))
    assert int(stats.tokens.sum()) > 0


def test_config_transform_matches_the_declared_one():
    """TransformerLens 3.x has no declared transform: the configuration fallback gives
    the same logits as the declared one on every scaled family."""
    for arch in ("cohere", "cohere2", "granite", "gemma2"):
        model = tiny.bridge(arch)
        logits = torch.randn(3, 7) * 10
        declared = model.adapter.apply_output_logits_transform(logits)
        torch.testing.assert_close(readout._config_transform(model)(logits), declared)


def test_the_checked_head_is_kept_by_the_readout_once_per_adapter():
    from tl_multilingual.model import readout

    lm = tlm.adapt(tiny.bridge("gpt2"))
    first = readout.head(lm)
    assert readout.head(lm) is first  # built and checked once
    assert not any(callable(v) and v is first for v in vars(lm).values())  # not written into the adapter
