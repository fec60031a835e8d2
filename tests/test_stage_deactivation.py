"""Every number of `stage_effects()`, recomputed here from per-text NLLs and lens
probabilities measured with and without the deactivation: the changes, the paired
intervals, the controls, the lens readout and the "carries" rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual.causal.evaluate import text_nll
from tl_multilingual.experiments.stage_deactivation import stage_effects

N_BOOT = 3000


@pytest.fixture(scope="module")
def setup():
    # The planted neurons sit in the last layer, so that the lens's output layer is the
    # first to change.
    toy = tlm.models.planted(n_layers=4, layer=3)
    lm = tlm.adapt(toy.model)
    # English gets four of the neurons both languages share (16-23: they raise the shared
    # answer "."), Russian its own planted neurons (8-15).
    membership = torch.zeros(4, lm.d_mlp, 2, dtype=torch.bool)
    membership[3, 16:20, 0] = True
    membership[3, 8:16, 1] = True
    neurons = tlm.LanguageNeurons(
        ("en", "ru"), membership, membership.any(-1), None, method="reference"
    )
    held = tlm.Corpus.from_dict({lang: texts[30:] for lang, texts in toy.texts.items()})
    words = {lang: [w for t in texts for w in t.split()] for lang, texts in toy.texts.items()}
    prompts = [
        tlm.LensPrompt(" ".join(words[lang][i : i + 8]), {lang: words[lang][i + 8]})
        for lang in ("en", "ru")
        for i in range(0, 72, 9)
    ]
    # Layer 3 is the vocabulary output stage.
    stage_map = tlm.StageMap.from_boundaries(4, (1, 2, 3), d_mlp=lm.d_mlp)
    result = stage_effects(
        lm,
        neurons,
        stage_map,
        held,
        lens_prompts=prompts,
        controls=3,
        seed=4,
        n_boot=N_BOOT,
        progress=False,
    )
    return lm, neurons, stage_map, held, prompts, result


def per_text(frame, language):
    rows = frame[frame["language"] == language].sort_values("text")
    return rows["nll"].to_numpy(float), rows["tokens"].to_numpy(float)


def relative_change(hit, base, tokens, index):
    """exp((sum hit - sum base) / sum tokens) - 1 over the texts ``index`` (last axis)."""
    return np.exp((hit[index].sum(-1) - base[index].sum(-1)) / tokens[index].sum(-1)) - 1


def interval(replicates):
    return tuple(np.quantile(replicates, [0.025, 0.975]))


def close(value, expected, width):
    return value == pytest.approx(expected, abs=0.1 * width + 1e-9)


def test_the_perplexity_columns_match_a_paired_bootstrap_written_here(setup):
    lm, neurons, stage_map, held, _, result = setup
    frame = result.to_frame().set_index(["stage", "language"])
    base = text_nll(lm, held)
    rng = np.random.default_rng(0)
    draws = {lang: rng.integers(0, 10, size=(N_BOOT, 10)) for lang in ("en", "ru")}
    every = np.arange(10)
    span = stage_map.layers("vocabulary_output")
    for lang, other in (("en", "ru"), ("ru", "en")):
        mask = neurons.specific(lang).restrict(span)
        with tlm.ablate(lm, mask):
            hit = text_nll(lm, held)
        controls = []
        for control in mask.controls(3, seed=4):
            with tlm.ablate(lm, control):
                controls.append(text_nll(lm, held))
        row = frame.loc[("vocabulary_output", lang)]
        assert row["n_neurons"] == mask.count() and row["layers"] == "3-3" and row["n_texts"] == 10
        b, tokens = per_text(base, lang)
        h, _ = per_text(hit, lang)
        own = relative_change(h, b, tokens, every)
        b_other, tokens_other = per_text(base, other)
        h_other, _ = per_text(hit, other)
        others = relative_change(h_other, b_other, tokens_other, every)
        ctrl = [relative_change(per_text(c, lang)[0], b, tokens, every) for c in controls]
        assert row["own_change"] == pytest.approx(own, rel=1e-9, abs=1e-12)
        assert row["others_change"] == pytest.approx(others, rel=1e-9, abs=1e-12)
        assert row["control_change"] == pytest.approx(np.mean(ctrl), rel=1e-9, abs=1e-12)
        assert row["over_control"] == pytest.approx(own - np.mean(ctrl), rel=1e-9, abs=1e-12)
        assert row["over_others"] == pytest.approx(own - others, rel=1e-9, abs=1e-12)
        # Paired intervals: every condition resampled over the same draw of texts.
        own_reps = relative_change(h, b, tokens, draws[lang])
        ctrl_reps = np.mean(
            [relative_change(per_text(c, lang)[0], b, tokens, draws[lang]) for c in controls], 0
        )
        other_reps = relative_change(h_other, b_other, tokens_other, draws[other])
        for column, reps in (
            ("own", own_reps),
            ("over_control", own_reps - ctrl_reps),
            ("over_others", own_reps - other_reps),
        ):
            low, high = interval(reps)
            assert close(row[f"{column}_ci_low"], low, high - low), (lang, column)
            assert close(row[f"{column}_ci_high"], high, high - low), (lang, column)
    # Stages without the language's neurons deactivate nothing: not measured, not zero.
    for stage in ("understanding", "shared_reasoning", "output_transformation"):
        for lang in ("en", "ru"):
            row = frame.loc[(stage, lang)]
            assert row["n_neurons"] == 0 and not row["measured"] and not row["carries"]
            assert np.isnan(row["own_change"]) and np.isnan(row["control_change"])
            assert np.isnan(row["own_ci_low"]) and np.isnan(row["own_ci_high"])


def test_a_stage_carries_a_language_only_when_both_lower_bounds_are_above_zero(setup):
    *_, result = setup
    frame = result.to_frame()
    expected = (frame["over_control_ci_low"] > 0) & (frame["over_others_ci_low"] > 0)
    assert (frame["carries"].astype(bool) == expected).all()
    # The data hold both cases the rule separates: Russian's own neurons beat both
    # comparisons; English's share of the common neurons beats the other language but
    # not random neurons.
    row = frame.set_index(["stage", "language"]).loc
    assert row[("vocabulary_output", "ru")]["carries"]
    en = row[("vocabulary_output", "en")]
    assert en["over_others_ci_low"] > 0 and en["over_control_ci_low"] <= 0 and not en["carries"]
    assert result.carriers() == ["vocabulary_output"]


def test_the_lens_columns_match_the_lens_read_here(setup):
    lm, neurons, stage_map, _, prompts, result = setup
    frame = result.to_frame().set_index(["stage", "language"])
    base = tlm.language_lens(lm, prompts).probability.numpy().astype(float)
    rng = np.random.default_rng(1)
    for k, lang in enumerate(("en", "ru")):
        rows = [i for i, p in enumerate(prompts) if next(iter(p.answers)) == lang]
        mask = neurons.specific(lang).restrict(stage_map.layers("vocabulary_output"))
        with tlm.ablate(lm, mask):
            hit = tlm.language_lens(lm, prompts).probability.numpy().astype(float)
        controls = []
        for control in mask.controls(3, seed=4):
            with tlm.ablate(lm, control):
                controls.append(tlm.language_lens(lm, prompts).probability.numpy().astype(float))
        lens_k = result.lens.query("stage == 'vocabulary_output' and language == @lang")
        b, h = base[rows, :, k], hit[rows, :, k]  # [prompt, layer]
        c = np.mean([x[rows, :, k] for x in controls], 0)
        change = (h - b).mean(0)
        row = frame.loc[("vocabulary_output", lang)]
        assert row["n_prompts"] == len(rows) == 8
        assert row["lens_output_change"] == pytest.approx(change[-1], abs=1e-7)
        assert row["lens_control_change"] == pytest.approx((c - b)[:, -1].mean(), abs=1e-7)
        deactivated = lens_k[lens_k["condition"] == "deactivated"].sort_values("layer")
        assert np.allclose(deactivated["change"], change, atol=1e-7)
        control_rows = lens_k[lens_k["condition"] == "control"].sort_values("layer")
        assert np.allclose(control_rows["change"], (c - b).mean(0), atol=1e-7)
        if change.min() < 0:
            assert row["lens_peak_layer"] == int(np.argmin(change))
            assert row["lens_peak_change"] == pytest.approx(change.min(), abs=1e-7)
        else:
            assert np.isnan(row["lens_peak_layer"])
        draws = rng.integers(0, len(rows), size=(N_BOOT, len(rows)))
        low, high = interval(h[draws, -1].mean(1) - b[draws, -1].mean(1))
        assert close(row["lens_output_ci_low"], low, high - low)
        assert close(row["lens_output_ci_high"], high, high - low)
        for layer in range(4):
            low, high = interval(h[draws, layer].mean(1) - b[draws, layer].mean(1))
            assert close(deactivated["ci_low"].iloc[layer], low, high - low)
            assert close(deactivated["ci_high"].iloc[layer], high, high - low)


def test_the_finding_states_the_numbers_of_the_table(setup):
    *_, result = setup
    frame = result.to_frame()
    means = frame.groupby("stage")["lens_output_change"].mean()
    worst = means.idxmin()
    peak = frame[frame["stage"] == worst]["lens_peak_layer"].median()
    text = result.finding()
    assert f"when {worst.replace('_', ' ')} was hit (mean change {means[worst]:+.3g}" in text
    assert f"largest drop around layer {peak:.0f}" in text
    for stage in tlm.STAGES:
        rows = frame[(frame["stage"] == stage) & frame["measured"].astype(bool)]
        if len(rows):
            assert f"{stage.replace('_', ' ')} {int(rows['carries'].astype(bool).sum())} of {len(rows)}" in text
        else:
            assert f"{stage.replace('_', ' ')} not measured" in text
    assert "Not measured, for want of the languages' neurons in those layers: understanding (en, ru)" in text
