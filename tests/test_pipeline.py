"""Resuming a study: a changed setting recomputes exactly the steps built on it, down the
whole chain of steps that depend on them, and reuses the others."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import tl_multilingual as tlm
from tl_multilingual import data
from tl_multilingual.study.pipeline import Study, StudySettings

STEPS = ("statistics", "neurons", "lens", "stages", "deactivation", "stage_effects", "sharing")
BASE = StudySettings(
    held_out=4,
    min_held_out=4,
    min_train_texts=5,
    eval_texts=2,
    controls=1,
    n_boot=10,
    sharing_items=3,
    lens_pairs=1,
    lens_words=4,
    stage_words=2,
    top_rate=0.05,
    variants=("specific",),
    allow_unsupported_stages=True,  # a tiny random model's stages are not supported: run them anyway
)


@pytest.fixture(scope="module")
def model():
    return tlm.models.tiny("llama", n_layers=4)


def corpus():
    return data.parallel(["en", "fr", "zh"]).head(12)


def sharing_texts(settings):
    """The held-out texts the sharing step reads under ``settings``."""
    held = corpus().split(settings.held_out, seed=settings.seed)[1]
    return [t.text for t in held["en"]][: settings.sharing_items]


def run(folder, model, settings):
    """Run the study; returns the steps it computed and each step's key."""
    messages = []
    study = Study(
        folder, model, corpus(), settings, words=data.words(["en", "fr", "zh"]), log=messages.append
    )
    study.run()
    computed = {m.split("] ")[1].split(" done")[0] for m in messages if " done in " in m}
    reused = {m.split("] ")[1].split(":")[0] for m in messages if "up to date" in m}
    assert computed | reused == set(STEPS) and not computed & reused, messages
    manifest = json.loads((folder / "manifest.json").read_text())
    return computed, {name: manifest["steps"][name]["key"] for name in STEPS}


# What each setting changes first, and every step built on those (directly or through
# another step): the statistics feed the neurons, the neurons the stage map, the
# deactivation and the stage effects; the lens feeds the stage map; the stage map the
# stage effects. The seed also draws the held-out texts (deactivation, stage effects,
# sharing) and the lens prompts; the sharing step is recomputed when the held-out texts it
# reads change.
CHANGES = [
    ("seed", 1, {"statistics", "neurons", "lens", "stages", "deactivation", "stage_effects"}),
    ("top_rate", 0.1, {"neurons", "stages", "deactivation", "stage_effects"}),
    ("lens_words", 5, {"lens", "stages", "stage_effects"}),
    ("n_boot", 20, {"stages", "deactivation", "stage_effects"}),
]


def test_a_changed_setting_recomputes_every_step_built_on_it_and_nothing_else(
    model, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        "tl_multilingual.study.report.write_report", lambda folder: None
    )  # not under test here
    folder = tmp_path / "study"
    computed, keys = run(folder, model, BASE)
    assert computed == set(STEPS)
    assert sharing_texts(replace(BASE, seed=1)) != sharing_texts(
        BASE
    )  # a new seed holds out other texts
    settings = BASE
    for name, value, expected in CHANGES:
        previous, settings = settings, replace(settings, **{name: value})
        if sharing_texts(settings) != sharing_texts(previous):
            expected = expected | {"sharing"}
        computed, new_keys = run(folder, model, settings)
        assert computed == expected, name
        assert {step for step in STEPS if new_keys[step] != keys[step]} == expected, name
        keys = new_keys


def test_a_stage_map_the_data_do_not_support_skips_the_stage_experiment_with_a_sentence(model, tmp_path):
    folder = tmp_path / "study"
    messages = []
    settings = replace(BASE, allow_unsupported_stages=False)
    Study(folder, model, corpus(), settings, words=data.words(["en", "fr", "zh"]), log=messages.append).run()
    stages = tlm.StageMap.load(folder / "stages.json")
    assert stages.verdict.level == "not supported"  # four layers: the only segmentation there is
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "stage_effects" not in manifest["steps"] and not (folder / "stage_effects").exists()
    assert "do not support the stage map" in manifest["skipped"]["stage_effects"]
    html = (folder / "report.html").read_text()
    assert "The step &#x27;stage_effects&#x27; was skipped: the data do not support the stage map" in html
    assert "no stages are shaded: the data do not support" in html
    assert "No experiment or figure uses these stages." in html
