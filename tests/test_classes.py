"""LanguageNeurons: the ternary classes on statistics with a known answer."""

from __future__ import annotations

import importlib

import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual.neurons.classes import CLASS_CODES

LANGS = ["en", "fr", "zh"]


def planted():
    """Neurons with known classes: layer 0 neuron j for j < 3 fires only in language j;
    neuron 3 fires in en and fr; neuron 4 fires everywhere; the rest rarely fire."""
    probs = torch.full((2, 20, 3), 0.01)
    for j in range(3):
        probs[0, j, j] = 0.9
    probs[0, 3, :2] = 0.8
    probs[0, 4] = 0.95
    probs[1, 7, 2] = 0.85
    tokens = torch.tensor([1000, 1000, 1000])
    return tlm.ActivationStats.from_counts(LANGS, tokens, (probs * 1000).round().long())


def test_planted_classes_are_found():
    neurons = tlm.identify(planted(), method="ternary", top_rate=0.125, bar_ratio=0.9)
    assert neurons.specific("en").indices().tolist() == [[0, 0]]
    assert neurons.specific("fr").indices().tolist() == [[0, 1]]
    assert neurons.specific("zh").indices().tolist() == [[0, 2], [1, 7]]
    assert neurons.related("en").indices().tolist() == [[0, 3]]
    assert neurons.related("fr").indices().tolist() == [[0, 3]]
    assert neurons.related("zh").count() == 0
    assert neurons.general().indices().tolist() == [[0, 4]]
    assert neurons.language("en") == neurons.specific("en") | neurons.related("en")
    assert neurons.specific("English") == neurons.specific("en")
    with pytest.raises(tlm.IdentificationError):
        neurons.specific("de")


def test_tidy_frames_and_counts():
    neurons = tlm.identify(planted(), method="ternary", top_rate=0.125, bar_ratio=0.9)
    frame = neurons.to_frame()
    assert set(frame.columns) == {"layer", "neuron", "class", "language"}
    assert len(frame[frame["class"] == "related"]) == 2  # neuron (0, 3) for en and fr
    assert frame[frame["class"] == "general"]["language"].isna().all()
    counts = neurons.layer_counts()
    zh0 = counts.query("layer == 0 and `class` == 'specific' and language == 'zh'")["count"].item()
    assert zh0 == 1
    summary = neurons.summary().set_index("language")
    assert summary.loc["zh", "specific"] == 2
    assert neurons.mask("related", "fr") == neurons.related("fr")


def test_save_load_round_trip(tmp_path):
    neurons = tlm.identify(planted(), method="ternary", top_rate=0.125, bar_ratio=0.9)
    neurons.save(tmp_path / "n")
    back = tlm.LanguageNeurons.load(tmp_path / "n")
    assert back.lam == neurons.lam and back.languages == neurons.languages
    for cls in ("specific", "related"):
        for lang in LANGS:
            assert back.mask(cls, lang) == neurons.mask(cls, lang)
    assert back.general() == neurons.general()
    assert back.histogram == neurons.histogram


def test_one_class_code_per_neuron_underlies_every_view():
    neurons = tlm.identify(planted(), method="ternary", top_rate=0.125, bar_ratio=0.9)
    codes = neurons.classes()
    assert codes.dtype == torch.int8 and codes.shape == (2, 20)
    names = CLASS_CODES
    assert names[:4] == ("specific", "related", "general", "other") and names[4] == "dropped"
    assert codes[0, :5].tolist() == [0, 0, 0, 1, 2]  # planted: three specific, one related, one general
    assert neurons.specific() == tlm.NeuronMask(codes == 0)
    assert neurons.related() == tlm.NeuronMask(codes == 1)
    assert neurons.general() == tlm.NeuronMask(codes == 2)
    assert neurons.dropped == int((codes == 4).sum())
    assert ((codes == 4) == (neurons.selected().tensor & ~neurons.membership.any(-1))).all()
    for lang in LANGS:  # per language: the language's membership within each class
        assert neurons.specific(lang) | neurons.related(lang) == neurons.language(lang)
    frame = neurons.to_frame()
    per_class = frame.drop_duplicates(["layer", "neuron"])["class"].value_counts().to_dict()
    expected = {names[c]: n for c, n in enumerate(torch.bincount(codes.flatten().long(), minlength=5).tolist())
                if n and names[c] != "other"}
    assert per_class == expected
    counts = neurons.layer_counts().groupby("class")["count"].sum().to_dict()
    assert counts["dropped"] == neurons.dropped and counts["general"] == neurons.general().count()
    compare = importlib.import_module("tl_multilingual.experiments.comparison")
    assert torch.equal(compare.neuron_class(neurons), codes.long().masked_fill(codes == 4, 3))


def test_dropped_neurons_are_counted_in_summary_and_frame():
    # Neurons 5-7 have the lowest entropy at a low rate but stay under the bar: selected, no language.
    probs = torch.full((1, 20, 3), 0.01)
    probs[0, 0, 0] = probs[0, 1, 1] = probs[0, 2, 2] = 0.9
    probs[0, 5:8, 0] = 0.3
    stats = tlm.ActivationStats.from_counts(LANGS, torch.tensor([1000] * 3), (probs * 1000).round().long())
    neurons = tlm.identify(stats, method="ternary", top_rate=0.3, bar_ratio=0.95, lam=0.0)
    assert neurons.dropped == 3
    summary = neurons.summary()
    assert list(summary.columns) == ["language", "specific", "related", "total", "dropped"]
    assert summary["dropped"].tolist() == [3, 3, 3]
    frame = neurons.to_frame()
    dropped = frame[frame["class"] == "dropped"]
    assert dropped["neuron"].tolist() == [5, 6, 7] and dropped["language"].isna().all()
    assert "dropped=3" in repr(neurons)


def test_the_recipe_is_saved_and_loaded(tmp_path):
    stats = planted()
    neurons = tlm.identify(stats, method="ternary", top_rate=0.125, bar_ratio=0.9, lam=0.1)
    neurons.save(tmp_path / "n")
    back = tlm.LanguageNeurons.load(tmp_path / "n")
    assert back.recipe == neurons.recipe and back.recipe["lam_range"] == (0.0, 0.2)
    assert torch.equal(tlm.identify(stats, **back.recipe).classes(), neurons.classes())
    imported = tlm.LanguageNeurons.from_reference_format(neurons.to_reference_format(), LANGS, d_mlp=20)
    with pytest.raises(tlm.IdentificationError, match="no recipe"):
        _ = imported.recipe
    with pytest.raises(tlm.IdentificationError, match="unknown neuron class"):
        neurons.mask("shared")
