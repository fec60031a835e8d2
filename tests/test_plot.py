"""Figures: every function draws and saves PNG and PDF."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import tiny
from conftest import require

import tl_multilingual as tlm

require("matplotlib")


@pytest.fixture(scope="module")
def results():
    model = tiny.bridge("llama", n_layers=6)
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    stats = tlm.collect_stats(lm, corpus, progress=False)
    neurons = tlm.identify(stats, top_rate=0.1)
    words = tlm.data.words(["en", "fr", "de"])[:6]
    lens = tlm.language_lens(lm, tlm.prompts.translation(words, src="fr", tgt="de", shots=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random model's stages come with cautions
        stages = tlm.map_stages(neurons, lens, n_boot=0)
    matrix = tlm.deactivation_matrix(lm, neurons, corpus, controls=0, n_boot=10, progress=False)
    items = tlm.ParallelItems.from_records([{"id": str(i), "text": {"en": e, "fr": f}}
                                            for i, (e, f) in enumerate(zip(tiny.SAMPLE_TEXT["en"], tiny.SAMPLE_TEXT["fr"]))])
    sharing = tlm.sharing(lm, items, progress=False)
    return neurons, lens, stages, matrix, sharing


def test_every_figure_saves(results, tmp_path):
    from tl_multilingual.study import plot

    neurons, lens, stages, matrix, sharing = results
    figures = {
        "classes": plot.neuron_classes(neurons, stages=stages),
        "languages": plot.language_counts(neurons),
        "heatmap": plot.deactivation_heatmap(matrix, "specific"),
        "lens": plot.lens_curves(lens, stages=stages, n_boot=50),
        "sharing": plot.sharing_profile(sharing),
        "stage_effects": plot.stage_effects_heatmap(_effects()),
    }
    for name, fig in figures.items():
        written = plot.save(fig, tmp_path / name)
        assert [p.suffix for p in written] == [".png", ".pdf"]
        assert all(p.stat().st_size > 1000 for p in written)


def _effects():
    from tl_multilingual.experiments.stage_deactivation import StageEffects

    rows = [{"stage": s, "language": lang, "over_control": 0.5 if s == "output_transformation" else 0.01,
             "carries": s == "output_transformation"} for s in tlm.STAGES for lang in ("en", "fr")]
    return StageEffects(pd.DataFrame(rows), pd.DataFrame(), "specific")


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for ax in fig.axes for t in ax.texts if t.get_gid() == "stage-label"]


@pytest.mark.parametrize("boundaries", [(1, 2, 3), (60, 61, 125), (40, 80, 120)])
def test_stage_labels_never_overlap(boundaries):
    from tl_multilingual.study import plot

    stages = tlm.StageMap.from_boundaries(126, boundaries)
    frame = pd.DataFrame({"layer": range(126), "class": "specific", "change": 1.0})
    fig = plot.class_changes(frame, stages=stages)
    boxes = _boxes(fig)
    assert len(boxes) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not boxes[i].overlaps(boxes[j]), (boundaries, i, j)
    assert all(fig.axes[0].bbox.x0 - 1 <= b.x0 and b.x1 <= fig.axes[0].bbox.x1 + 1 for b in boxes)
    plot.save(fig, "/dev/null", formats=())


def test_language_neurons_keep_a_scale_of_their_own(results):
    from tl_multilingual.study import plot

    neurons = results[0]
    fig = plot.neuron_classes(neurons)
    left, right = fig.axes[0], fig.axes[1]  # bars of language neurons; line of general neurons
    language = (neurons.specific().per_layer() + neurons.related().per_layer()).max().item()
    general = neurons.general().per_layer().max().item()
    assert left.get_ylim()[1] <= max(language * 1.15, 1) + 1e-9
    assert right.get_ylim()[1] >= general
    assert left.get_ylabel() == "language neurons" and right.get_ylabel() == "general neurons"
    plot.save(fig, "/dev/null", formats=())


def test_lens_curves_draw_the_summary_they_are_given_without_resampling(results, monkeypatch):
    from tl_multilingual.study import plot

    _, lens, stages, _, _ = results
    summary = lens.summary(n_boot=20)

    def resample(*args, **kwargs):
        raise AssertionError("a figure resampled")

    monkeypatch.setattr(tlm.LensResult, "summary", resample)
    fig = plot.lens_curves(summary, stages=stages)
    bands = fig.axes[0].collections
    assert len(bands) >= len(lens.languages)
    with pytest.warns(DeprecationWarning, match="summary"), pytest.raises(AssertionError, match="resampled"):
        plot.lens_curves(lens)


def test_figures_are_styled_without_touching_the_users_settings(results):
    matplotlib = require("matplotlib")
    from tl_multilingual.study import plot

    neurons, _, _, matrix, _ = results
    backend = matplotlib.get_backend()
    with matplotlib.rc_context({"font.size": 13, "axes.spines.top": True}):  # the user's own style
        before = dict(matplotlib.rcParams)
        figures = [plot.neuron_classes(neurons), plot.deactivation_heatmap(matrix, "specific")]
        assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend
        mine = matplotlib.pyplot.figure()  # the user's next figure keeps the user's style
        assert mine.add_subplot().spines["top"].get_visible()
    for fig in figures:  # ours carry the paper style
        ax = fig.axes[0]
        assert not ax.spines["top"].get_visible()
        assert ax.xaxis.label.get_fontsize() == plot.STYLE["axes.labelsize"]
        assert ax.get_xticklabels()[0].get_fontsize() == plot.STYLE["xtick.labelsize"]
        plot.save(fig, "/dev/null", formats=())
    matplotlib.pyplot.close(mine)


def test_the_deactivation_heatmap_keeps_its_old_name_for_a_release(monkeypatch):
    from tl_multilingual.study import plot

    monkeypatch.delitem(vars(plot), "ablation_heatmap", raising=False)
    with pytest.warns(DeprecationWarning, match="plot.ablation_heatmap is now .*deactivation_heatmap"):
        assert plot.ablation_heatmap is plot.deactivation_heatmap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot.ablation_heatmap is plot.deactivation_heatmap  # warned once


def test_a_backend_already_chosen_is_kept():
    """In a notebook (inline backend) or wherever pyplot was set up first, drawing a
    figure must not switch matplotlib to Agg: the figure would not show."""
    import os
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot as plt\n"
            "import tl_multilingual as tlm\n"
            "tlm.plot.neuron_classes(tlm.identify(tlm.collect_stats(tlm.models.tiny('llama'), "
            "tlm.Corpus.from_dict(tlm.models.SAMPLE_TEXT), progress=False), top_rate=0.1))\n"
            "print(matplotlib.get_backend())")
    for env, expected in (({"MPLBACKEND": ""}, "svg"), ({"MPLBACKEND": "svg"}, "svg")):
        done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                              text=True, env={**os.environ, **env}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == expected
    headless = code.replace("matplotlib.use('svg'); import matplotlib.pyplot as plt\n", "\n")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", headless], capture_output=True,
                          text=True, env={**os.environ, "MPLBACKEND": ""}, timeout=300)
    assert done.stdout.strip().splitlines()[-1].lower() == "agg"


@pytest.mark.parametrize("level, spans, hatched, note", [
    ("supported", 4, False, None),
    ("weak", 4, True, "weak stages (hatched)"),
    ("not supported", 0, False, "stages not shown: not supported by the data"),
])
def test_stages_are_shaded_by_their_verdict(level, spans, hatched, note):
    import dataclasses

    from tl_multilingual.stages.stage_map import Verdict
    from tl_multilingual.study import plot

    stages = dataclasses.replace(tlm.StageMap.from_boundaries(16, (4, 10, 14)), verdict=Verdict(level, ("x",)))
    frame = pd.DataFrame({"layer": range(16), "class": "specific", "change": 1.0})
    fig = plot.class_changes(frame, stages=stages)
    ax = fig.axes[0]
    shaded = [p for p in ax.patches if p.get_zorder() == 0]
    assert len(shaded) == spans
    assert all(bool(p.get_hatch()) == hatched for p in shaded)
    notes = [t.get_text() for t in ax.texts if t.get_gid() == "stage-verdict"]
    assert notes == ([note] if note else [])
    assert len(_boxes(fig)) == spans  # stage numbers only where stages are drawn
    plot.save(fig, "/dev/null", formats=())
