"""The study report's rules, on numbers with known answers."""

from __future__ import annotations

import pytest

from tl_multilingual.study.report import _hurt_most


def test_a_language_whose_own_perplexity_fell_is_not_hurt_most():
    # English in a real run: its own perplexity fell 1.45%, the others' median fell 1.70%.
    assert not _hurt_most(-0.0145, -0.0170)
    assert _hurt_most(0.20, 0.01)
    assert not _hurt_most(0.01, 0.05)
    assert not _hurt_most(0.0, -0.5)


def _neurons(language_per_layer, d_mlp=16, langs=("en", "fr", "de")):
    import torch

    import tl_multilingual as tlm

    membership = torch.zeros(len(language_per_layer), d_mlp, len(langs), dtype=torch.bool)
    for layer, n in enumerate(language_per_layer):
        for j in range(n):
            membership[layer, j, j % 2] = True  # en and fr only: de has no specific neurons
    general = torch.zeros(len(language_per_layer), d_mlp, dtype=torch.bool)
    general[:, -2:] = True
    return tlm.LanguageNeurons(
        langs, membership, membership.any(-1), general, method="reference", lam=0.05
    )


def test_the_findings_are_the_numbers_of_the_results_computed_here():
    import numpy as np
    import pandas as pd
    import torch

    import tl_multilingual as tlm
    from tl_multilingual.experiments.deactivation import DeactivationResult
    from tl_multilingual.study.report import findings

    per_layer = [9, 7, 5, 4, 3, 2, 6, 8]
    neurons = _neurons(per_layer)
    stage_map = tlm.StageMap.from_boundaries(8, (2, 5, 7), d_mlp=16)
    rows = []
    for ablated in ("en", "fr", "de"):
        for k, evaluated in enumerate(("en", "fr", "de")):
            own = ablated == evaluated
            baseline = 10.0 + k
            rows.append(
                {
                    "variant": "specific",
                    "ablated": ablated,
                    "evaluated": evaluated,
                    "baseline": baseline,
                    "relative_change": (0.3 if ablated != "de" else -0.1)
                    if own
                    else 0.01 * (k + 1),
                    "control_change": 0.5 if own else 0.0,
                }
            )
    deactivation = DeactivationResult(pd.DataFrame(rows), pd.DataFrame(), "perplexity")
    codes = torch.zeros(3, 2, 4, dtype=torch.uint8)
    codes[:, 0, :] = 7  # layer 0: all-shared on every item
    codes[1, 1, 0] = 1  # layer 1: neuron 0 changes class on one item
    shared = tlm.Sharing(("en", "fr", "de"), ["a", "b", "c"], codes, 0.0, "last")
    manifest = {
        "data": {"held_out_texts": {"en": 12, "fr": 7, "de": 9}},
        "settings": {"eval_texts": 8},
    }
    facts = findings(
        {
            "neurons": {"ternary": neurons},
            "stages": stage_map,
            "deactivation": deactivation,
            "sharing": shared,
            "manifest": manifest,
        }
    )
    quarter = facts["language_neurons_by_quarter"]  # 8 layers: two per quarter
    assert quarter == {
        "first": np.mean(per_layer[:2]),
        "middle": np.mean(per_layer[2:6]),
        "last": np.mean(per_layer[6:]),
    }
    assert facts["stages"] == {
        "understanding": [0, 1],
        "shared_reasoning": [2, 4],
        "output_transformation": [5, 6],
        "vocabulary_output": [7, 7],
    }
    assert (
        facts["specific"] == sum(per_layer) and facts["general"] == 16 and facts["lambda"] == 0.05
    )
    assert facts["languages_without_specific"] == ["de"]
    d = facts["deactivation"]
    assert d["variant"] == "specific" and d["languages"] == 3
    for k, lang in enumerate(("en", "fr", "de")):
        own = 0.3 if lang != "de" else -0.1
        others = [0.01 * (j + 1) for j in range(3) if j != k]
        assert d["per_language"][lang] == {
            "own": own,
            "others_median": np.median(others),
            "control": 0.5 / (10 + k),
        }
    assert d["own_above_others_median"] == 2  # de's own perplexity fell
    assert d["own_above_control"] == 2  # 0.3 against 0.5 / 10 and 0.5 / 11; de fell
    assert d["texts_per_language"] == 7 and d["few_texts"]
    s = facts["sharing"]
    assert s["stable_percent"] == pytest.approx((100.0 + 75.0) / 2)
    # Layer 0 all-shared on every item; layer 1 non-activated but one specific neuron of one item.
    assert s["percent"] == {
        "all_shared": 50.0,
        "partial_shared": 0.0,  # rounded to two decimals
        "specific": round(25 / 3 / 2, 2),
        "non_activated": round((100 - 25 / 3) / 2, 2),
    }


def test_the_first_quarter_of_six_layers_is_one_layer():
    from tl_multilingual.study.report import findings

    facts = findings({"neurons": {"ternary": _neurons([6, 1, 1, 1, 1, 4])}})
    assert facts["language_neurons_by_quarter"] == {"first": 6.0, "middle": 1.0, "last": 4.0}


def test_identical_variants_are_said_once_and_drawn_once(tmp_path):
    import pandas as pd

    from tl_multilingual.experiments.deactivation import DeactivationResult
    from tl_multilingual.study.report import _figures, _finding_lines, findings

    neurons = _neurons([3, 1, 0, 2])  # no neuron is related: specific+related == specific
    assert neurons.related().count() == 0
    rows = [{"variant": v, "ablated": a, "evaluated": e, "baseline": 10.0,
             "relative_change": 0.2 if a == e else 0.01, "control_change": 0.0}
            for v in ("specific", "specific+related", "general") for a in ("en", "fr") for e in ("en", "fr")]
    deactivation = DeactivationResult(pd.DataFrame(rows), pd.DataFrame(), "perplexity")
    results = {"neurons": {"ternary": neurons}, "deactivation": deactivation, "manifest": {}}
    facts = findings(results)
    assert facts["same_variants"] == {"specific+related": "specific"}
    lines = " ".join(_finding_lines(facts))
    assert "The 'specific+related' neurons are exactly the 'specific' neurons" in lines
    figures = _figures(results, tmp_path)
    drawn = [name for name in figures if name.startswith("deactivation_")]
    assert drawn == ["deactivation_specific", "deactivation_general"]
    assert "'specific+related' selects exactly these neurons" in figures["deactivation_specific"]
    # With a related neuron the two variants differ, and both are drawn.
    related = _neurons([3, 1, 0, 2])
    related.membership[0, 5, :2] = True
    related._selected[0, 5] = True
    assert related.related().count() > 0
    assert "same_variants" not in findings({**results, "neurons": {"ternary": related}})


def test_the_lambda_sentence_says_when_the_data_do_not_identify_lambda():
    from tl_multilingual.study.report import _lambda_sentence

    facts = {"lambda": 0.2, "lambda_identified": False,
             "lambda_sensitivity": {"lambdas": [0.0, 0.2, 1.0],
                                    "counts": {"specific": [130, 165], "related": [0, 4], "general": [7, 7],
                                               "dropped": [6, 141], "selected": [300, 300]}}}
    text = _lambda_sentence(facts)
    assert "The data do not identify lambda" in text and "lambda = 0.2 by the default rule" in text
    assert "specific 130-165" in text and "general 7;" in text and "dropped 6-141" in text
    assert "selected 300" not in text and "lam_range" not in text
    assert _lambda_sentence({"lambda": 0.1, "lambda_identified": True, "lambda_at_bound": None}) == ""
    assert "upper bound" in _lambda_sentence({"lambda": 0.2, "lambda_identified": True,
                                              "lambda_at_bound": "upper"})
