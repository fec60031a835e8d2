"""Cross-language patching: the sanity property, controls and readouts."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm

WORDS = [{"en": w, "fr": f, "de": d} for w, f, d in
         (("cat", "chat", "Katze"), ("mat", "tapis", "Matte"), ("morning", "matin", "Morgen"), ("market", "marché", "Markt"))]


def mlp_out_at_last(lm, batch, layer, hooks=()):
    """hook_mlp_out of ``layer`` at each row's last real position."""
    seen = {}

    def keep(tensor, hook):
        seen["out"] = tensor.detach().clone()

    lm.forward(batch, fwd_hooks=list(hooks) + [(f"blocks.{layer}.hook_mlp_out", keep)])
    last = batch.attention_mask.shape[1] - 1 - batch.attention_mask.flip(-1).argmax(-1)
    return seen["out"][torch.arange(len(last)), last]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_patching_every_neuron_reproduces_the_sources_mlp_output(arch):
    lm = tlm.adapt(tiny.bridge(arch))
    source = tlm.prompts.translation(WORDS, src="fr", tgt="en", shots=1)
    target = tlm.prompts.translation(WORDS, src="fr", tgt="de", shots=1)
    src = lm.pad(lm.tokenize([p.text for p in source]), side="left")
    tgt = lm.pad(lm.tokenize([p.text for p in target]), side="left")
    values = tlm.record(lm, src)[:, -1]  # last position of every source row
    for layer in range(lm.n_layers):
        everything = tlm.NeuronMask.full(lm.n_layers, lm.d_mlp).restrict([layer])
        positions = torch.zeros_like(tgt.attention_mask, dtype=torch.bool)
        positions[:, -1] = True
        with tlm.patch(lm, everything, values[:, None], positions=positions):
            patched = mlp_out_at_last(lm, tgt, layer)
        torch.testing.assert_close(patched, mlp_out_at_last(lm, src, layer), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(mlp_out_at_last(lm, tgt, layer), patched)


def test_patch_neurons_reports_baseline_patched_and_controls():
    lm = tlm.adapt(tiny.bridge("llama"))
    source = tlm.prompts.translation(WORDS, src="fr", tgt="en", shots=1)
    target = tlm.prompts.translation(WORDS, src="fr", tgt="de", shots=1)
    mask = tlm.NeuronMask.random([0, 12], lm.d_mlp, seed=3)
    result = tlm.patch_neurons(lm, source=source, target=target, mask=mask, controls=2, batch_size=3)
    assert result.conditions == ("baseline", "patched", "control_0", "control_1")
    assert result.languages == ("de", "en") and result.n_neurons == 12
    assert result.probability.shape == (4, len(WORDS), lm.n_layers, 2)
    # Layer 0 comes before any patched neuron (all in layer 1): nothing changes there.
    assert torch.equal(result.probability[1, :, 0], result.probability[0, :, 0])
    assert not torch.equal(result.probability[1, :, 1], result.probability[0, :, 1])
    baseline = tlm.language_lens(lm, target).probability
    torch.testing.assert_close(result.probability[0], baseline)
    summary = result.summary(n_boot=100)
    assert set(summary["condition"]) == {"baseline", "patched", "control"}
    assert (summary.query("condition == 'baseline'")["change"] == 0).all()
    assert set(result.output()["layer"]) == {lm.n_layers - 1}
    frame = result.to_frame()
    assert len(frame) == 4 * len(WORDS) * lm.n_layers * 2


def test_all_position_alignment_needs_equal_lengths():
    lm = tlm.adapt(tiny.bridge("gpt2"))
    same = [tlm.LensPrompt("The cat sleeps on the", {"en": "mat"})]
    result = tlm.patch_neurons(lm, source=same, target=same, mask=tlm.NeuronMask.random([5, 5], lm.d_mlp),
                               align="all", controls=1)
    torch.testing.assert_close(result.probability[1], result.probability[0])  # patching a run with itself
    with pytest.raises(tlm.TLMultilingualError, match="equal token length"):
        tlm.patch_neurons(lm, source=[tlm.LensPrompt("The cat", {"en": "x"})], target=same,
                          mask=tlm.NeuronMask.random([5, 5], lm.d_mlp), align="all", controls=0)
    with pytest.raises(tlm.TLMultilingualError, match="parallel"):
        tlm.patch_neurons(lm, source=same * 2, target=same, mask=tlm.NeuronMask.random([5, 5], lm.d_mlp))


def test_the_summary_pools_the_controls_only_and_pairs_every_condition_with_the_baseline():
    import numpy as np

    from tl_multilingual import resample
    from tl_multilingual.causal.patching import PatchResult

    rng = np.random.default_rng(0)
    probability = torch.tensor(rng.random((5, 7, 3, 2)))  # baseline, patched, three controls
    probability[1] += 0.5  # the patched run far above the controls: pooling it in would show
    result = PatchResult(
        ("baseline", "patched", "control_0", "control_1", "control_2"), ("de", "en"), probability, 4
    )
    summary = result.summary(ci=0.9, n_boot=400, seed=2).set_index(
        ["condition", "layer", "language"]
    )
    p = probability.numpy()
    draws = resample.draws(7, 400, 2)
    for name, runs in (("baseline", [0]), ("patched", [1]), ("control", [2, 3, 4])):
        values = p[runs].mean(0)  # [prompt, layer, lang]
        changes = np.array([values[row].mean(0) - p[0][row].mean(0) for row in draws])
        for layer in range(3):
            for k, lang in enumerate(("de", "en")):
                row = summary.loc[(name, layer, lang)]
                assert row["probability"] == pytest.approx(values[:, layer, k].mean())
                assert row["change"] == pytest.approx(
                    (values - p[0])[:, layer, k].mean(), abs=1e-12
                )
                assert row["ci_low"] == pytest.approx(
                    np.quantile(changes[:, layer, k], 0.05), abs=1e-12
                )
                assert row["ci_high"] == pytest.approx(
                    np.quantile(changes[:, layer, k], 0.95), abs=1e-12
                )
    assert (
        summary.loc["control", "change"] < 0.2
    ).all()  # the patched run is not among the controls
    output = result.output()
    assert set(output["layer"]) == {2} and len(output) == 3 * 2


def test_plain_string_prompts_without_readout_are_refused_not_read_as_nothing():
    lm = tlm.adapt(tiny.bridge("llama"))
    mask = tlm.NeuronMask.from_pairs([(0, 1)], lm.n_layers, lm.d_mlp)
    with pytest.raises(tlm.TLMultilingualError, match="no answers to read"):
        tlm.patch_neurons(lm, source=["The cat"], target=["Le chat"], mask=mask)
