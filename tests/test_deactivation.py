"""Deactivation experiments: structure, controls, and a planted end-to-end case."""

from __future__ import annotations

import numpy as np
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


# -- every number of a cell, recomputed here ----------------------------------------------


def _pooled_perplexity(nll, tokens, index):
    """Perplexity of the texts ``index`` (rows of draws) pooled: exp(sum nll / sum tokens)."""
    return np.exp(nll[index].sum(-1) / tokens[index].sum(-1))


def test_every_cell_of_the_matrix_matches_a_paired_bootstrap_written_here(rigged):
    """Baseline, value, change, relative change and the paired interval of every cell, from
    per-text NLLs measured here with and without the deactivation; the controls' columns
    from the per-seed control table."""
    from tl_multilingual.causal.evaluate import text_nll

    lm, neurons, held_out, _ = rigged
    result = tlm.deactivation_matrix(
        lm, neurons, held_out, classes=["specific"], controls=3, n_boot=4000, seed=5, progress=False
    )
    frame = result.to_frame().set_index(["ablated", "evaluated"])
    base = text_nll(lm, held_out)
    rng = np.random.default_rng(0)
    for ablated in ("en", "ru"):
        with tlm.ablate(lm, neurons.specific(ablated)):
            hit = text_nll(lm, held_out)
        for evaluated in ("en", "ru"):
            b = base[base["language"] == evaluated].sort_values("text")
            h = hit[hit["language"] == evaluated].sort_values("text")
            tokens, b_nll, h_nll = (
                b["tokens"].to_numpy(float),
                b["nll"].to_numpy(),
                h["nll"].to_numpy(),
            )
            every = np.arange(len(b))
            row = frame.loc[(ablated, evaluated)]
            assert row["baseline"] == pytest.approx(
                _pooled_perplexity(b_nll, tokens, every), rel=1e-9
            )
            assert row["value"] == pytest.approx(_pooled_perplexity(h_nll, tokens, every), rel=1e-9)
            assert row["change"] == pytest.approx(row["value"] - row["baseline"], rel=1e-9)
            assert row["relative_change"] == pytest.approx(
                row["change"] / row["baseline"], rel=1e-9
            )
            # The paired bootstrap: one draw of texts for both conditions.
            draws = rng.integers(0, len(b), size=(4000, len(b)))
            changes = _pooled_perplexity(h_nll, tokens, draws) - _pooled_perplexity(
                b_nll, tokens, draws
            )
            low, high = np.quantile(changes, [0.025, 0.975])
            width = high - low
            assert row["ci_low"] == pytest.approx(low, abs=0.1 * width), (ablated, evaluated)
            assert row["ci_high"] == pytest.approx(high, abs=0.1 * width), (ablated, evaluated)
            # Controls: per-seed values, their mean change and spread.
            ctrl = result.controls.query("ablated == @ablated and evaluated == @evaluated")
            assert sorted(ctrl["seed"]) == [0, 1, 2]
            changes = ctrl["value"].to_numpy() - row["baseline"]
            assert len(set(ctrl["value"].round(9))) == 3  # three different random sets
            assert row["control_change"] == pytest.approx(changes.mean(), rel=1e-9)
            assert row["control_change_sd"] == pytest.approx(changes.std(ddof=1), rel=1e-9)
            assert row["control_value"] == pytest.approx(row["baseline"] + changes.mean(), rel=1e-9)
            assert row["effect_over_control"] == pytest.approx(
                row["change"] - changes.mean(), rel=1e-9
            )
    # A cross-language cell changes little and varies with the texts much: unpaired draws
    # (the baseline's texts drawn apart from the condition's) would give an interval
    # several times as wide as the paired one above.
    cross = frame.loc[("en", "ru")]
    b = base[base["language"] == "ru"].sort_values("text")
    tokens, b_nll = b["tokens"].to_numpy(float), b["nll"].to_numpy()
    draws, others = rng.integers(0, len(b), size=(2, 4000, len(b)))
    spread = _pooled_perplexity(b_nll, tokens, draws) - _pooled_perplexity(b_nll, tokens, others)
    assert np.quantile(spread, 0.975) - np.quantile(spread, 0.025) > 2 * (
        cross["ci_high"] - cross["ci_low"]
    )


def test_accuracy_cells_are_shares_of_correct_items_with_a_paired_interval(rigged):
    from tl_multilingual.causal.evaluate import choice_scores

    lm, neurons, _, toy = rigged
    items = {
        lang: [
            {
                "prompt": " ".join(text.split()[:-1]),
                "options": [" " + text.split()[-1], " ."],
                "answer": 0,
            }
            for text in toy.texts[lang][30:40]
        ]
        for lang in ("en", "ru")
    }
    result = tlm.deactivation_matrix(
        lm, neurons, items, classes=["specific"], controls=0, n_boot=4000, progress=False
    )
    assert result.metric == "accuracy" and len(result.controls) == 0
    frame = result.to_frame().set_index(["ablated", "evaluated"])
    base = choice_scores(lm, items)
    rng = np.random.default_rng(1)
    for ablated in ("en", "ru"):
        with tlm.ablate(lm, neurons.specific(ablated)):
            hit = choice_scores(lm, items)
        for evaluated in ("en", "ru"):
            b = base[base["language"] == evaluated].sort_values("item")["correct"].to_numpy(float)
            h = hit[hit["language"] == evaluated].sort_values("item")["correct"].to_numpy(float)
            row = frame.loc[(ablated, evaluated)]
            assert (row["baseline"], row["value"]) == pytest.approx((b.mean(), h.mean()))
            assert row["change"] == pytest.approx(h.mean() - b.mean())
            assert np.isnan(row["control_change"])
            draws = rng.integers(0, len(b), size=(4000, len(b)))
            changes = h[draws].mean(1) - b[draws].mean(1)
            low, high = np.quantile(changes, [0.025, 0.975])
            assert row["ci_low"] == pytest.approx(low, abs=0.05 + 0.1 * (high - low))
            assert row["ci_high"] == pytest.approx(high, abs=0.05 + 0.1 * (high - low))
