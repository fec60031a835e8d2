"""LanguageNeurons: the ternary classes on statistics with a known answer."""

from __future__ import annotations

import pytest
import torch

import tl_multilingual as tlm

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
