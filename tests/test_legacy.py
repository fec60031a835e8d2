"""TransformerLens 3.x: a HookedTransformer and a bridge with the same weights agree."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm

try:
    from transformer_lens import HookedTransformer  # noqa: F401
except ImportError:
    pytest.skip("HookedTransformer exists only in TransformerLens 3.x", allow_module_level=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_hooked_transformer_and_bridge_give_the_same_counts(arch, side):
    hooked, bridged = tiny.hooked_and_bridge(arch)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    lm_hooked = tlm.adapt(hooked, padding_side=side)
    lm_bridge = tlm.adapt(bridged, padding_side=side)
    assert lm_hooked.kind == "hooked" and lm_bridge.kind == "bridge"
    assert (lm_hooked.n_layers, lm_hooked.d_mlp, lm_hooked.gated) == (lm_bridge.n_layers, lm_bridge.d_mlp, lm_bridge.gated)
    a = tlm.collect_stats(lm_hooked, corpus, batch_size=3, progress=False)
    b = tlm.collect_stats(lm_bridge, corpus, batch_size=3, progress=False)
    single = tlm.collect_stats(lm_hooked, corpus, batch_size=1, progress=False)
    assert a.token_counts == b.token_counts
    assert torch.equal(a.active_counts, single.active_counts)
    assert torch.equal(a.active_counts, b.active_counts)
    torch.testing.assert_close(a.sums, b.sums, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_interventions_and_perplexity_agree_across_model_classes(arch):
    hooked, bridged = tiny.hooked_and_bridge(arch)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    mask = tlm.NeuronMask.from_pairs([(0, 3), (1, 5), (1, 40)], 2, 48)
    results = []
    for model in (hooked, bridged):
        lm = tlm.adapt(model)
        stats = tlm.collect_stats(lm, corpus, progress=False)
        with tlm.ablate(lm, mask, value="mean", stats=stats, language="fr"):
            results.append(tlm.perplexity(lm, corpus)["perplexity"].to_numpy())
    assert results[0] == pytest.approx(results[1], rel=1e-4)
