"""Wang et al.'s (2024) per-item sharing classes and parallel items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny
import torch
from conftest import require

import tl_multilingual as tlm
from tl_multilingual.neurons.sharing_classes import (
    SHARING_CLASSES,
    classify_codes,
    item_activations,
    language_codes,
)


def loop_classes(acts, threshold):
    """The definition, one neuron at a time: acts [P, ...] -> class names."""
    flat = acts.reshape(acts.shape[0], -1)
    n_languages = flat.shape[0]
    out = []
    for j in range(flat.shape[1]):
        s = sum(1 for p in range(n_languages) if flat[p, j] > threshold)
        out.append("all_shared" if s == n_languages else "non_activated" if s == 0 else "specific" if s == 1 else "partial_shared")
    return out


@pytest.mark.parametrize("n_languages", range(2, 11))
@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.3, 0.5])
def test_classes_match_the_definition(n_languages, threshold):
    gen = torch.Generator().manual_seed(n_languages)
    acts = torch.randn(n_languages, 3, 4, 20, generator=gen) * 0.5  # [lang, item, layer, neuron]
    classes = classify_codes(language_codes(acts > threshold), n_languages)
    expected = loop_classes(acts, threshold)
    assert [SHARING_CLASSES[c] for c in classes.reshape(-1).tolist()] == expected
    assert len(classes.unique()) >= 2  # the draw exercises several classes, not one


ITEMS = [
    {"id": f"q{i}", "text": {"en": en, "fr": fr, "de": de}, "answer": {"en": " mat", "fr": " tapis", "de": " Matte"}}
    for i, (en, fr, de) in enumerate(zip(tiny.SAMPLE_TEXT["en"], tiny.SAMPLE_TEXT["fr"], tiny.SAMPLE_TEXT["de"] + ["Die Zahl ist zwölf."]))
]


def hand_values(model, lm, texts, position):
    gated = lm.gated
    out = []
    for ids in lm.tokenize(texts):
        seen = {}

        def grab(tensor, hook, store=seen):
            store[len(store)] = tensor[0].detach()

        name = "hook_pre" if gated else "hook_post"
        with torch.no_grad():
            model.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(f"blocks.{l}.mlp.{name}", grab) for l in range(lm.n_layers)])
        layers = []
        for l in range(lm.n_layers):
            values = lm.neuron_values(l, seen[l]) if gated else seen[l]
            layers.append(values[-1] if position == "last" else values[1:].max(0).values)
        out.append(torch.stack(layers))
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("position", ["last", "any"])
def test_activations_read_for_sharing_equal_a_plain_run(arch, side, position):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model, padding_side=side)
    texts = tiny.SAMPLE_TEXT["en"] + tiny.SAMPLE_TEXT["zh"]
    got = item_activations(lm, texts, position=position, batch_size=4)
    torch.testing.assert_close(got, hand_values(model, lm, texts, position), rtol=1e-5, atol=1e-5)


def test_sharing_on_a_model_and_its_summaries():
    model = tiny.bridge("qwen2")
    lm = tlm.adapt(model)
    items = tlm.ParallelItems.from_records(ITEMS)
    both = tlm.sharing(lm, items, threshold=[0.0, 0.2], progress=False)
    result = both[0.0]
    acts = torch.stack([item_activations(lm, items.texts(lang)) for lang in items.languages])
    expected = classify_codes(language_codes(acts > 0.0), 3)
    assert torch.equal(result.classes(), expected)
    strict = tlm.sharing(lm, items, threshold=0.2, progress=False)
    assert torch.equal(both[0.2].codes, strict.codes)
    profile = result.layer_profile()
    assert profile.groupby("layer")["percent"].sum().round(6).tolist() == [100.0] * lm.n_layers
    stability = result.stability()
    per_class = stability.query("`class` != 'any'").groupby("layer")["percent"].sum().to_numpy()
    assert stability.query("`class` == 'any'")["percent"].to_numpy() == pytest.approx(per_class)
    mask = result.mask("q1", "specific", language="fr")
    fr_only = (acts[1, 1] > 0) & (acts[0, 1] <= 0) & (acts[2, 1] <= 0)
    assert torch.equal(mask.tensor, fr_only)
    frame = result.to_frame()
    assert set(frame.columns) == {"item", "layer", "class", "count", "percent"}
    assert len(frame) == len(items) * lm.n_layers * 4
    with pytest.raises(tlm.TLMultilingualError):
        result.mask(0, "related")


def test_parallel_items_formats_and_missing_translations(tmp_path):
    items = tlm.ParallelItems.from_records(ITEMS)
    assert items.languages == ("en", "fr", "de") and len(items) == 3
    assert items[0].answer("fr") == " tapis"
    long = [{"id": r["id"], "language": lang, "text": t, "answer": r["answer"][lang]} for r in ITEMS for lang, t in r["text"].items()]
    assert [i.texts for i in tlm.ParallelItems.from_records(long)] == [i.texts for i in items]
    wide = [{"id": "a", "eng_Latn": "hello", "fra_Latn": "bonjour", "note": "greeting"}]
    assert tlm.ParallelItems.from_records(wide)[0].texts == {"en": "hello", "fr": "bonjour"}
    broken = ITEMS + [{"id": "q9", "text": {"en": "Only English."}}]
    with pytest.raises(tlm.CorpusError, match="q9"):
        tlm.ParallelItems.from_records(broken)
    with pytest.warns(UserWarning, match="q9"):
        kept = tlm.ParallelItems.from_records(broken, missing="drop")
    assert len(kept) == 3
    choice = [{"id": "c", "text": {"en": "2+2=", "fr": "2+2="}, "options": {"en": ["4", "5"], "fr": ["4", "5"]}, "label": 0}]
    assert tlm.ParallelItems.from_records(choice)[0].answer("fr") == "4"
    with pytest.raises(tlm.CorpusError, match="label"):
        tlm.ParallelItems.from_records([dict(choice[0], label=7)])
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ITEMS))
    assert len(tlm.ParallelItems.from_jsonl(path)) == 3
    datasets = require("datasets")
    ds = datasets.Dataset.from_list(long)
    assert len(tlm.ParallelItems.from_hf(ds)) == 3


def test_stability_layer_profile_and_percentages_are_counted_item_by_item():
    """A neuron is stable when its class is the same on every item (all of them, not
    some); percentages are of ``d_mlp``; the profile's spread is over items."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(
        0, 8, (5, 3, 16), generator=generator, dtype=torch.uint8
    )  # 5 items, 3 languages
    codes[:, 0, :6] = codes[0, 0, :6]  # neurons 0-5 of layer 0: the same on every item
    codes[1:, 2, :] = codes[0, 2, :]
    codes[3, 2, 0] = 7 if codes[0, 2, 0] != 7 else 0  # one item differs: not stable
    result = tlm.Sharing(("en", "fr", "de"), [f"q{i}" for i in range(5)], codes, 0.0, "last")
    names = [
        [
            loop_classes(torch.stack([(codes[i, layer] >> p) & 1 for p in range(3)]).bool(), 0.5)
            for layer in range(3)
        ]
        for i in range(5)
    ]  # [item][layer][neuron] -> class
    stability = result.stability().set_index(["layer", "class"])["percent"]
    for layer in range(3):
        same = [all(names[i][layer][j] == names[0][layer][j] for i in range(5)) for j in range(16)]
        assert stability[(layer, "any")] == pytest.approx(100 * sum(same) / 16)
        for cls in SHARING_CLASSES:
            count = sum(s and names[0][layer][j] == cls for j, s in enumerate(same))
            assert stability[(layer, cls)] == pytest.approx(100 * count / 16)
    assert stability[(0, "any")] >= 100 * 6 / 16 and stability[(2, "any")] == pytest.approx(
        100 * 15 / 16
    )
    assert stability[(1, "any")] < 50  # random classes: few neurons keep theirs on all five items
    profile = result.layer_profile().set_index(["layer", "class"])
    frame = result.to_frame().set_index(["item", "layer", "class"])
    for layer in range(3):
        for cls in SHARING_CLASSES:
            percents = [100 * sum(c == cls for c in names[i][layer]) / 16 for i in range(5)]
            assert profile.loc[(layer, cls), "percent"] == pytest.approx(np.mean(percents))
            assert profile.loc[(layer, cls), "sd"] == pytest.approx(np.std(percents, ddof=1))
            for i in range(5):
                assert frame.loc[(f"q{i}", layer, cls), "percent"] == pytest.approx(percents[i])
    two = result.layer_profile(items=[1, 3]).set_index(["layer", "class"])
    for cls in SHARING_CLASSES:
        assert two.loc[(0, cls), "percent"] == pytest.approx(
            np.mean([100 * sum(c == cls for c in names[i][0]) / 16 for i in (1, 3)])
        )
