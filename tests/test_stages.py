"""The four-stage layer map: on paper A's statistics, on a planted lens, and in use."""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.lens import LensResult
from tl_multilingual.stages import segment


@pytest.fixture(scope="module")
def paper_a(njunlp_stats):
    return njunlp_stats, tlm.identify(njunlp_stats, method="ternary")


def test_class_profiles_of_paper_a_give_its_stages(paper_a):
    stats, neurons = paper_a
    stages = tlm.map_stages(None, neurons, stats=stats, n_boot=10)
    assert stages.signals == ("neurons",) and stages.constrained
    assert stages.layers("understanding").stop - 1 in (3, 4, 5)
    assert stages.layers("shared_reasoning").stop - 1 in (16, 17, 18, 19)
    assert stages.layers("vocabulary_output") in (range(31, 32), range(30, 32))
    assert set(stages.confidence) == {"understanding|shared_reasoning", "shared_reasoning|output_transformation",
                                      "output_transformation|vocabulary_output"}
    assert all(0.0 <= c <= 1.0 for c in stages.confidence.values())
    frame = stages.to_frame()
    assert list(frame["stage"].unique()) == list(tlm.STAGES)
    assert {"language_neurons", "general_neurons", "stage_agreement"} <= set(frame.columns)


def planted_lens(step: int, n_layers: int = 12, n_prompts: int = 20, seed: int = 0) -> LensResult:
    """Prompts whose target answer is decodable only from layer ``step`` on."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.where(torch.arange(n_layers) >= step, 0.8, 0.001).expand(n_prompts, n_layers)
    target = (target + 0.02 * torch.rand(n_prompts, n_layers, generator=gen)).clamp(0, 1)
    english = torch.full((n_prompts, n_layers), 0.01) + 0.005 * torch.rand(n_prompts, n_layers, generator=gen)
    entropy = 5.0 - 4.0 * target + 0.1 * torch.rand(n_prompts, n_layers, generator=gen)
    probability = torch.stack([target, english], -1)
    return LensResult(("zh", "en"), probability, torch.ones_like(probability), entropy,
                      torch.zeros(n_prompts, n_layers, dtype=torch.long), tuple([None] * n_prompts))


@pytest.mark.parametrize("step", [3, 6, 9])
def test_a_planted_decodability_step_gives_a_boundary_there(step):
    stages = tlm.map_stages(None, lens=planted_lens(step), n_boot=20)
    assert step in stages.boundaries
    assert stages.signals == ("lens",)
    # Refits on resampled prompts always put a boundary at the step.
    assert stages.evidence.loc[step, "boundary_share"] > 0.95
    assert stages.evidence["boundary_share"].drop(index=step).max() < 0.95


def test_segmentation_is_the_exact_optimum():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.full(4, 1.0), np.full(5, -1.0), np.full(6, 2.0), np.full(2, 5.0)])[:, None]
    x = x + 0.01 * rng.standard_normal(x.shape)
    assert segment(x)[0] == (4, 9, 15)


def test_both_signals_attach_to_the_model_and_restrict_experiments():
    model = tiny.bridge("llama", n_layers=6)
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    stats = tlm.collect_stats(lm, corpus, progress=False)
    neurons = tlm.identify(stats, top_rate=0.1)
    with pytest.raises(tlm.TLMultilingualError, match="stage map"):
        tlm.ablate(lm, neurons.specific(), layers="understanding")
    words = [{"en": w, "fr": f} for w, f in (("cat", "chat"), ("mat", "tapis"), ("morning", "matin"), ("market", "marché"))]
    lens = tlm.language_lens(lm, tlm.prompts.translation(words, src="en", tgt="fr", shots=1))
    stages = tlm.map_stages(lm, neurons, lens=lens, stats=stats, n_boot=5)
    assert stages.signals == ("neurons", "lens")
    assert tlm.adapt(model).stages is stages
    spans = [stages.layers(s) for s in tlm.STAGES]
    assert [layer for span in spans for layer in span] == list(range(6))
    first = stages.layers("understanding")
    assert stages.mask("understanding").per_layer().tolist() == [lm.d_mlp if l in first else 0 for l in range(6)]
    specific = neurons.specific()
    with tlm.ablate(lm, specific, layers="understanding") as edits:
        (edit,) = edits.edits
        assert edit.mask == specific.restrict(first)
    table = tlm.ablation_matrix(lm, neurons, corpus, layers="shared_reasoning", controls=0, n_boot=10, progress=False)
    for lang in corpus.languages:
        expected = neurons.specific(lang).restrict(stages.layers("shared_reasoning")).count()
        assert table.to_frame().query("ablated == @lang")["n_neurons"].iloc[0] == expected
    with pytest.raises(tlm.TLMultilingualError, match="unknown stage"):
        stages.layers("thinking")
