"""The language of generations under steer, boost and ablate, with random-neuron
controls: a deterministic fake identifier, so every number is recomputed here from the
model's own greedy continuations."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tiny
from conftest import require

import tl_multilingual as tlm
from tl_multilingual import resample
from tl_multilingual.experiments.engine import control_seed
from tl_multilingual.experiments.generation_language import _score, segments

PROMPTS = {
    "en": ["The cat sleeps on the", "We walked to the", "The sun is"],
    "fr": ["Le chat dort sur le", "Nous avons marché au", "Le soleil est"],
}
CODES = ("en", "fr", "de")


def fake(texts):
    """A language per text from its length (a text without a letter: none)."""
    return [CODES[len(t) % 3] if any(c.isalpha() for c in t) else None for t in texts]


def split(text):
    """Sentences and lines, written independently of the library: cut after . ! ? and at
    line breaks; pieces without a letter dropped."""
    pieces, current = [], ""
    for ch in text:
        if ch == "\n":
            pieces.append(current)
            current = ""
            continue
        current += ch
        if ch in ".!?":
            pieces.append(current)
            current = ""
    pieces.append(current)
    return [p.strip() for p in pieces if any(c.isalpha() for c in p)]


def measures(texts, target):
    share = np.array([float(fake([t])[0] == target) for t in texts])
    switching = []
    for t in texts:
        labels = [lab for lab in fake(split(t)) if lab is not None]
        switching.append(np.mean([lab != target for lab in labels]) if labels else np.nan)
    return {"target_share": share, "code_switching": np.array(switching, dtype=float)}


@pytest.fixture(scope="module")
def setup():
    lm = tlm.adapt(tiny.bridge("llama", n_layers=2))
    stats = tlm.collect_stats(lm, tlm.Corpus.from_dict(tiny.SAMPLE_TEXT), progress=False)
    neurons = tlm.identify(stats, method="lape", top_rate=0.1)
    return lm, neurons, stats


def test_segments_and_measures_of_known_texts():
    assert segments("Le chat dort. The cat sleeps!\n12 + 30") == ["Le chat dort.",
                                                                  "The cat sleeps!"]
    assert segments("猫在睡觉。它很好！ ok") == ["猫在睡觉。", "它很好！", "ok"]
    assert segments("Hallo Welt\nBonjour le monde\n\n") == ["Hallo Welt", "Bonjour le monde"]
    assert segments("") == [] and segments("3.14 ... !") == []

    def keyword(texts):
        return [("fr", 0.9) if "Bonjour" in t else ("en", 0.8) if "Hello" in t else None
                for t in texts]

    scored = _score(["Bonjour. Hello.", "Hello", "", "12", "Bonjour. Bonjour!"], "fr", keyword)
    assert scored["target_share"].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert scored["code_switching"].tolist()[:2] == [0.5, 1.0]
    assert np.isnan(scored["code_switching"].tolist()[2:4]).all()
    assert scored["code_switching"].tolist()[4] == 0.0
    assert scored["n_segments"].tolist() == [2, 1, 0, 0, 2]
    assert scored["detected"].tolist() == ["fr", "en", None, None, "fr"]


@pytest.mark.parametrize("edit", ["boost", "ablate", "steer"])
def test_every_number_is_the_fake_identifiers_reading_of_the_models_continuations(setup, edit,
                                                                                 tmp_path):
    lm, neurons, stats = setup
    seed, n_boot, n_controls, new = 5, 200, 2, 8
    settings = {"boost": {"factor": 8.0}, "ablate": {"value": 6.0}, "steer": {"stats": stats}}[edit]
    result = tlm.generation_language(lm, neurons, PROMPTS, edit=edit, classes=["language"],
                                     backend=fake, max_new_tokens=new, controls=n_controls,
                                     seed=seed, n_boot=n_boot, progress=False, **settings)

    def edited(mask, target):
        if edit == "boost":
            return tlm.boost(lm, mask, factor=8.0)
        if edit == "ablate":
            return tlm.ablate(lm, mask, value=6.0)
        return tlm.steer(lm, mask, to=target, stats=stats)

    def continue_(target):
        return tlm.generate(lm, PROMPTS[target], max_new_tokens=new, stop=("\n\n",))

    rng = np.random.default_rng(seed)
    draws = {lang: resample.draws(len(PROMPTS[lang]), n_boot, rng) for lang in PROMPTS}
    frame = result.to_frame().set_index(["language", "measure"])
    differ = 0
    for block, target in enumerate(PROMPTS):
        mask = neurons.language(target)
        base_texts = continue_(target)
        with edited(mask, target):
            hit_texts = continue_(target)
        ctrl_texts = []
        for random_mask in mask.controls(n_controls, seed=control_seed(seed, block)):
            with edited(random_mask, target):
                ctrl_texts.append(continue_(target))
        differ += sum(a != b for a, b in zip(base_texts, hit_texts))
        base, hit = measures(base_texts, target), measures(hit_texts, target)
        ctrl = [measures(t, target) for t in ctrl_texts]
        rows = result.generations[result.generations["language"] == target]
        assert rows[rows.condition == "baseline"]["generation"].tolist() == base_texts
        assert rows[rows.condition == "edited"]["generation"].tolist() == hit_texts
        assert rows[rows.condition == "control 1"]["generation"].tolist() == ctrl_texts[1]
        for name in ("target_share", "code_switching"):
            row = frame.loc[(target, name)]
            assert row["edit"] == edit and row["n_neurons"] == mask.count()
            assert row["baseline"] == pytest.approx(np.nanmean(base[name]), nan_ok=True)
            assert row["value"] == pytest.approx(np.nanmean(hit[name]), nan_ok=True)
            difference = hit[name] - base[name]
            assert row["change"] == pytest.approx(np.nanmean(difference), nan_ok=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicates: NaN
                replicates = np.nanmean(difference[draws[target]], axis=1)
                low, high = np.nanquantile(replicates, [0.025, 0.975])
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high), nan_ok=True)
            control = np.nanmean(np.stack([c[name] for c in ctrl]), axis=0)
            assert row["control_value"] == pytest.approx(np.nanmean(control), nan_ok=True)
            assert row["control_change"] == pytest.approx(np.nanmean(control - base[name]),
                                                          nan_ok=True)
            assert row["over_control"] == pytest.approx(np.nanmean(hit[name] - control),
                                                        nan_ok=True)
    assert differ > 0  # the edits reached the generations

    again = tlm.GenerationLanguage.load(result.save(tmp_path / "gen"))
    pd.testing.assert_frame_equal(again.frame, result.frame, check_dtype=False)
    assert again.generations["generation"].tolist() == result.generations["generation"].tolist()
    assert again.generations["detected"].tolist() == result.generations["detected"].tolist()
    assert again.record["edit"] == edit and again.record["model"]["name"] == lm.name
    assert again.provenance["shape"] == (lm.n_layers, lm.d_mlp)
    table = again.table("target_share")
    assert list(table.index) == ["en", "fr"]
    require("matplotlib")
    fig = tlm.plot.generation_language(again)
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    expected = [*table["baseline"], *table["value"], *table["control_value"]]
    assert heights == pytest.approx(expected)
    tlm.plot.save(fig, tmp_path / "figure")
    assert (tmp_path / "figure.png").stat().st_size > 0


def test_one_prompt_list_masks_per_language_and_bad_requests(setup):
    lm, neurons, stats = setup
    masks = {"en": neurons.language("en"), "fr": neurons.language("fr")}
    result = tlm.generation_language(lm, masks, ["The cat", "Le chat"], edit="boost", factor=4.0,
                                     backend=fake, max_new_tokens=4, controls=0, n_boot=20,
                                     progress=False)
    frame = result.to_frame()
    assert set(frame["language"]) == {"en", "fr"} and set(frame["variant"]) == {"mask"}
    assert frame["control_change"].isna().all()
    assert (frame.set_index(["language", "measure"]).loc[("en", "target_share"), "n_neurons"]
            == masks["en"].count())
    with pytest.raises(tlm.TLMultilingualError, match="stats"):
        tlm.generation_language(lm, neurons, PROMPTS, edit="steer", backend=fake, progress=False)
    with pytest.raises(tlm.TLMultilingualError, match="edit"):
        tlm.generation_language(lm, neurons, PROMPTS, edit="shout", backend=fake, progress=False)
    with pytest.raises(tlm.TLMultilingualError, match="no neurons"):
        tlm.generation_language(lm, neurons, {"sw": ["Habari"]}, edit="boost", backend=fake,
                                progress=False)
    with pytest.raises(tlm.CorpusError, match="no prompt"):
        tlm.generation_language(lm, neurons, {"en": []}, edit="boost", backend=fake,
                                progress=False)
    with pytest.raises(tlm.TLMultilingualError, match="labels"):
        tlm.generation_language(lm, masks, {"en": ["The cat"]}, edit="boost", controls=0,
                                backend=lambda texts: [], max_new_tokens=2, progress=False)


@pytest.mark.parametrize("options, message", [
    ({"edit": "steer", "strength": float("nan")}, "strength must be a finite number"),
    ({"edit": "steer", "strength": 2.0}, "mode='set' sets"),
    ({"edit": "steer", "mode": "add"}, "pass source="),
    ({"edit": "steer", "mode": "shift"}, "mode must be"),
    ({"edit": "boost", "factor": float("inf")}, "must be finite"),
])
def test_bad_edit_options_are_refused_before_any_generation(setup, monkeypatch, options, message):
    lm, neurons, stats = setup
    from tl_multilingual.experiments import generation_language as module

    def never(*args, **kwargs):
        raise AssertionError("generated before the options were checked")

    monkeypatch.setattr(module, "generate", never)
    with pytest.raises(tlm.TLMultilingualError, match=message):
        tlm.generation_language(lm, neurons, PROMPTS, stats=stats, backend=fake, progress=False, **options)


def test_generated_texts_come_back_as_texts(tmp_path):
    from tl_multilingual.experiments.generation_language import _COLUMNS, _GENERATION_COLUMNS

    generations = pd.DataFrame([["", "en", "baseline", 0, "42", None, 0.0, 0.0, np.nan, 0],
                                ["language", "en", "edited", 0, "a\rb. c", "en", 1.0, 1.0, 0.0, 2]],
                               columns=_GENERATION_COLUMNS)
    result = tlm.GenerationLanguage(pd.DataFrame(columns=_COLUMNS), generations, {"edit": "boost"})
    again = tlm.GenerationLanguage.load(result.save(tmp_path / "gen"))
    assert again.generations["generation"].tolist() == ["42", "a\rb. c"]
    assert again.generations["variant"].tolist() == ["", "language"]
    assert again.generations["detected"].tolist() == [None, "en"]
    assert again.record == {"edit": "boost"}
    with pytest.raises(tlm.SaveError):
        tlm.BenchmarkEffects.load(tmp_path / "gen")
