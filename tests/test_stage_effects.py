"""Causal evidence per stage on a planted model whose language neurons sit in one stage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual.experiments.stage_deactivation import StageEffects, stage_effects
from tl_multilingual.stages.stage_map import Verdict


@pytest.fixture(scope="module")
def planted():
    toy = tlm.models.planted(n_layers=4, layer=2)
    lm = tlm.adapt(toy.model)
    # The planted truth as identified neurons: each language's neurons in layer 2.
    membership = torch.zeros(4, lm.d_mlp, 2, dtype=torch.bool)
    for k, lang in enumerate(("en", "ru")):
        membership[toy.layer, toy.neurons[lang], k] = True
    neurons = tlm.LanguageNeurons(("en", "ru"), membership, membership.any(-1), None, method="reference")
    held = tlm.Corpus.from_dict({lang: texts[30:] for lang, texts in toy.texts.items()})
    words = {lang: [w for t in texts for w in t.split()] for lang, texts in toy.texts.items()}
    prompts = [tlm.LensPrompt(" ".join(words[lang][i : i + 8]), {lang: words[lang][i + 8]})
               for lang in ("en", "ru") for i in range(0, 72, 9)]
    stage_map = tlm.StageMap.from_boundaries(4, (1, 2, 3), d_mlp=lm.d_mlp)  # layer 2: output transformation
    result = stage_effects(lm, neurons, stage_map, held, lens_prompts=prompts, controls=3, n_boot=200,
                           progress=False)
    return toy, result


def test_the_effect_is_found_in_the_planted_stage_only(planted):
    toy, result = planted
    frame = result.to_frame().set_index(["stage", "language"])
    assert result.carriers() == ["output_transformation"]
    for lang in ("en", "ru"):
        hit = frame.loc[("output_transformation", lang)]
        assert hit["carries"] and hit["n_neurons"] == 8
        assert hit["own_change"] > 0.5 and hit["own_ci_low"] > 0.5
        assert hit["over_others_ci_low"] > 0.5 and hit["over_control_ci_low"] > 0.5
        # Random neurons of the same number per layer do next to nothing to the language.
        assert abs(hit["control_change"]) < 0.05 * hit["own_change"]
        for stage in ("understanding", "shared_reasoning", "vocabulary_output"):
            # No neurons of the language there: not measured, never a measured zero.
            other = frame.loc[(stage, lang)]
            assert other["n_neurons"] == 0 and not other["measured"] and not other["carries"]
            assert all(np.isnan(other[c]) for c in ("own_change", "own_ci_low", "own_ci_high", "over_control",
                                                   "over_control_ci_low", "lens_output_change"))
            assert other["note"].startswith("not measured")
    assert frame["measured"].sum() == 2
    assert "Not measured, for want of the languages' neurons in those layers: understanding (en, ru)" \
        in result.finding()
    assert "output transformation 2 of 2" in result.finding() and "understanding not measured;" in result.finding()


def test_the_lens_shows_where_the_answer_is_lost(planted):
    toy, result = planted
    frame = result.to_frame().set_index(["stage", "language"])
    for lang in ("en", "ru"):
        hit = frame.loc[("output_transformation", lang)]
        assert hit["lens_output_change"] < 0 and hit["lens_output_ci_high"] < 0
        assert hit["lens_peak_layer"] >= toy.layer  # nothing changes before the planted layer
        assert abs(hit["lens_control_change"]) < abs(hit["lens_output_change"])
        curve = result.lens.query("stage == 'output_transformation' and language == @lang and "
                                  "condition == 'deactivated'")
        assert (curve[curve["layer"] < toy.layer]["change"] == 0).all()
    assert "output transformation" in result.finding()


def test_the_result_reads_as_a_table_and_saves(planted, tmp_path):
    _, result = planted
    matrix = result.matrix("over_control")
    assert list(matrix.index) == list(tlm.STAGES) and list(matrix.columns) == ["en", "ru"]
    loaded = StageEffects.load(result.save(tmp_path / "effects"))
    assert loaded.carriers() == result.carriers() and loaded.variant == "specific"
    assert loaded.finding() == result.finding()
    # Ten held-out texts per language: no caution; fewer would add one.
    assert not result.few_units() and "caution" not in result.finding()
    with pytest.raises(tlm.TLMultilingualError, match="not a saved stage-effects"):
        StageEffects.load(tmp_path)


def test_a_stage_map_of_another_model_is_refused(planted):
    toy, result = planted
    with pytest.raises(tlm.TLMultilingualError, match="must fit the model"):
        stage_effects(toy.model, tlm.LanguageNeurons(("en", "ru"), torch.zeros(4, 48, 2, dtype=torch.bool),
                                                     torch.zeros(4, 48, dtype=torch.bool), None, method="reference"),
                      tlm.StageMap.from_boundaries(8, (1, 2, 3)), tlm.Corpus.from_dict({"en": ["a"]}),
                      progress=False)


def test_the_finding_counts_the_languages_evaluated_and_names_the_map(planted):
    toy, result = planted
    held = tlm.Corpus.from_dict({lang: texts[30:] for lang, texts in toy.texts.items()})
    neurons = _neurons(toy)
    stage_map = tlm.StageMap.from_boundaries(4, (1, 2, 3), d_mlp=48)
    one = stage_effects(toy.model, neurons, stage_map, held, languages=["en"], stages=("output_transformation",),
                        controls=0, n_boot=50, progress=False)
    assert one.evaluated == ("en", "ru") and list(one.frame["language"]) == ["en"]
    assert "no other-language comparison" not in one.finding()  # ru was evaluated
    assert np.isfinite(one.frame["others_change"].iloc[0])
    alone = dataclasses.replace(one, evaluated=("en",))
    assert "With one language evaluated there is no other-language comparison" in alone.finding()
    assert "Stages: the stage map given by hand: understanding 0, shared reasoning 1" in one.finding()
    assert one.stage_map == stage_map.label() and result.stage_map == stage_map.label()


def test_a_map_the_data_do_not_support_is_refused_unless_told(planted):
    toy, _ = planted
    held = tlm.Corpus.from_dict({lang: texts[30:] for lang, texts in toy.texts.items()})
    rejected = dataclasses.replace(tlm.StageMap.from_boundaries(4, (1, 2, 3), d_mlp=48),
                                   verdict=Verdict("not supported", ("no better than chance (p = 0.6)",)))
    with pytest.raises(tlm.TLMultilingualError, match=r"do not support .*allow_unsupported=True"):
        stage_effects(toy.model, _neurons(toy), rejected, held, progress=False)
    done = stage_effects(toy.model, _neurons(toy), rejected, held, stages=("output_transformation",),
                         controls=0, n_boot=50, progress=False, allow_unsupported=True)
    assert "not supported" in done.stage_map and "not supported" in done.finding()


def _neurons(toy):
    membership = torch.zeros(4, 48, 2, dtype=torch.bool)
    for k, lang in enumerate(("en", "ru")):
        membership[toy.layer, toy.neurons[lang], k] = True
    return tlm.LanguageNeurons(("en", "ru"), membership, membership.any(-1), None, method="reference")
