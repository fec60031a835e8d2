"""Deactivation experiments: structure, controls, and a planted end-to-end case."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm


@pytest.fixture(scope="module")
def rigged():
    toy = tlm.models.planted()
    lm = tlm.adapt(toy.model)
    train = tlm.Corpus.from_dict({lang: texts[:30] for lang, texts in toy.texts.items()})
    held_out = tlm.Corpus.from_dict({lang: texts[30:] for lang, texts in toy.texts.items()})
    stats = tlm.collect_stats(lm, train, progress=False)
    neurons = tlm.identify(stats, method="ternary", top_rate=16 / 48, bar_ratio=0.7)
    return lm, neurons, held_out, toy


def test_the_planted_neurons_are_identified(rigged):
    lm, neurons, _, toy = rigged
    for lang in ("en", "ru"):
        assert neurons.specific(lang).indices()[:, 1].tolist() == toy.neurons[lang]
        assert neurons.specific(lang).per_layer().tolist() == [8]


def test_ablating_a_languages_neurons_hurts_that_language_most(rigged):
    lm, neurons, held_out, _ = rigged
    result = tlm.deactivation_matrix(lm, neurons, held_out, classes=["specific"], controls=3, progress=False)
    rows = result.to_frame().set_index(["ablated", "evaluated"])
    for own, other in (("en", "ru"), ("ru", "en")):
        hit = rows.loc[(own, own)]
        assert hit["n_neurons"] == 8
        assert hit["change"] > 5 * abs(rows.loc[(own, other), "change"])  # own language far more
        assert hit["change"] > 5 * abs(hit["control_change"])  # far more than random neurons
        assert hit["ci_low"] > 0  # the interval excludes no effect
    matrix = result.matrix("specific")
    assert list(matrix.index) == ["en", "ru"] and list(matrix.columns) == ["en", "ru"]
    assert matrix.loc["en", "en"] > matrix.loc["en", "ru"]


def test_matrix_shape_variants_layers_and_controls():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    stats = tlm.collect_stats(lm, corpus, progress=False)
    neurons = tlm.identify(stats, method="ternary", top_rate=0.1)
    variants = ["specific", "specific+related", "specific+related+general"]
    result = tlm.deactivation_matrix(lm, neurons, corpus, classes=variants, controls=2, n_boot=50, progress=False)
    frame = result.to_frame()
    k = len(corpus.languages)
    assert len(frame) == len(variants) * k * k
    assert len(result.controls) == len(variants) * k * k * 2
    sizes = frame.drop_duplicates(["variant", "ablated"]).set_index(["variant", "ablated"])["n_neurons"]
    for lang in corpus.languages:
        assert sizes[("specific", lang)] == neurons.specific(lang).count()
        assert sizes[("specific+related+general", lang)] == (
            neurons.specific(lang) | neurons.related(lang) | neurons.general()
        ).count()
    assert (frame["ci_low"] <= frame["change"] + 1e-9).all() and (frame["change"] <= frame["ci_high"] + 1e-9).all()
    restricted = tlm.deactivation_matrix(
        lm, neurons, corpus, classes=["specific+related"], layers=[0], controls=1, n_boot=20, progress=False
    ).to_frame()
    for lang in corpus.languages:
        expected = (neurons.specific(lang) | neurons.related(lang)).restrict([0]).count()
        assert restricted[restricted.ablated == lang]["n_neurons"].iloc[0] == expected
    with pytest.raises(tlm.TLMultilingualError):
        result.matrix("nothing")


def test_accuracy_metric_on_multiple_choice_items():
    lm = tlm.adapt(tiny.bridge("gpt2"))
    stats = tlm.collect_stats(lm, tlm.Corpus.from_dict(tiny.SAMPLE_TEXT), progress=False)
    neurons = tlm.identify(stats, method="lape", top_rate=0.1)
    items = {
        "en": [{"prompt": "The cat sleeps on the", "options": [" mat", " market"], "answer": 0}] * 3,
        "fr": [{"prompt": "Le chat dort sur le", "options": [" tapis", " marché"], "answer": 0}] * 3,
    }
    result = tlm.deactivation_matrix(lm, neurons, items, classes=["language"], languages=["en", "fr"],
                                 controls=1, n_boot=20, progress=False)
    assert result.metric == "accuracy"
    assert set(result.to_frame()["baseline"]) <= {0.0, 1 / 3, 2 / 3, 1.0}


class _RecordingBar:
    """Stands in for tqdm: records whether each bar was closed."""

    bars: list = []

    def __init__(self, *args, **kwargs):
        self.closed = False
        _RecordingBar.bars.append(self)

    def update(self, n=1):
        pass

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fails(*args, **kwargs):
    raise RuntimeError("the intervention failed")


def test_every_controlled_experiment_closes_its_progress_bar_on_error(rigged, monkeypatch):
    from tl_multilingual.experiments import deactivation as experiments
    from tl_multilingual.experiments import engine, sharing_experiments, stage_deactivation

    lm, neurons, held_out, toy = rigged
    monkeypatch.setattr(engine, "tqdm", _RecordingBar)  # the one loop's bar
    monkeypatch.setattr(experiments, "ablate", _fails)
    _RecordingBar.bars.clear()
    with pytest.raises(RuntimeError):
        tlm.deactivation_matrix(lm, neurons, held_out, controls=1, progress=True)
    assert len(_RecordingBar.bars) == 1 and _RecordingBar.bars[0].closed

    records = [{"id": str(i), "text": {"en": toy.texts["en"][i], "ru": toy.texts["ru"][i]},
                "answer": {"en": toy.answer, "ru": toy.answer}} for i in range(30, 33)]
    items = tlm.ParallelItems.from_records(records)
    monkeypatch.setattr(sharing_experiments, "boost", _fails)
    _RecordingBar.bars.clear()
    with pytest.raises(RuntimeError):
        tlm.sharing_experiments.boost_experiment(lm, items, factors=[2.0], controls=1, progress=True)
    assert len(_RecordingBar.bars) == 1 and _RecordingBar.bars[0].closed

    deep = tlm.models.planted(n_layers=4, layer=2)
    membership = torch.zeros(4, tlm.adapt(deep.model).d_mlp, 2, dtype=torch.bool)
    membership[2, :8, 0] = membership[2, 8:16, 1] = True
    deep_neurons = tlm.LanguageNeurons(("en", "ru"), membership, membership.any(-1), None,
                                       method="reference")
    monkeypatch.setattr(stage_deactivation, "ablate", _fails)
    _RecordingBar.bars.clear()
    with pytest.raises(RuntimeError):
        tlm.stage_effects(deep.model, deep_neurons, tlm.StageMap.from_boundaries(4, (1, 2, 3)),
                          held_out, controls=1, progress=True)
    assert len(_RecordingBar.bars) == 1 and _RecordingBar.bars[0].closed


def test_controls_are_matched_to_variants_by_their_classes(rigged):
    lm, neurons, held_out, _ = rigged
    result = tlm.deactivation_matrix(lm, neurons, held_out, classes=["specific+related"],
                                 controls={"related + specific": 2}, n_boot=20, progress=False)
    assert result.controls["seed"].max() == 1  # two controls: the mapping's key names the same classes
    with pytest.raises(tlm.MaskError, match="unknown class"):
        tlm.deactivation_matrix(lm, neurons, held_out, classes=["specific+shared"], progress=False)
