"""Figures: every function draws and saves PNG and PDF."""

from __future__ import annotations

import pytest
import tiny

import tl_multilingual as tlm

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def results():
    model = tiny.bridge("llama", n_layers=6)
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    stats = tlm.collect_stats(lm, corpus, progress=False)
    neurons = tlm.identify(stats, top_rate=0.1)
    words = tlm.data.words(["en", "fr", "de"])[:6]
    lens = tlm.language_lens(lm, tlm.prompts.translation(words, src="fr", tgt="de", shots=1))
    stages = tlm.map_stages(lm, neurons, lens=lens, n_boot=0)
    matrix = tlm.ablation_matrix(lm, neurons, corpus, controls=0, n_boot=10, progress=False)
    items = tlm.ParallelItems.from_records([{"id": str(i), "text": {"en": e, "fr": f}}
                                            for i, (e, f) in enumerate(zip(tiny.SAMPLE_TEXT["en"], tiny.SAMPLE_TEXT["fr"]))])
    sharing = tlm.sharing(lm, items, progress=False)
    return neurons, lens, stages, matrix, sharing


def test_every_figure_saves(results, tmp_path):
    from tl_multilingual import plot

    neurons, lens, stages, matrix, sharing = results
    figures = {
        "classes": plot.neuron_classes(neurons, stages=stages),
        "languages": plot.language_counts(neurons),
        "heatmap": plot.ablation_heatmap(matrix, "specific"),
        "lens": plot.lens_curves(lens, stages=stages, n_boot=50),
        "sharing": plot.sharing_profile(sharing),
    }
    for name, fig in figures.items():
        written = plot.save(fig, tmp_path / name)
        assert [p.suffix for p in written] == [".png", ".pdf"]
        assert all(p.stat().st_size > 1000 for p in written)
