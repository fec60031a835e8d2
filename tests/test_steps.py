"""The study's step table: the run, the resume, the cache keys, the folder check and the
report all read it."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import tiny
import toy_experiment

import tl_multilingual as tlm
from tl_multilingual import data
from tl_multilingual.study import steps
from tl_multilingual.study.pipeline import Study, StudySettings, check_output_folder, study_entries

SMALL = StudySettings(held_out=4, min_train_texts=4, eval_texts=2, controls=1, n_boot=20,
                      sharing_items=3, batch_size=8, allow_unsupported_stages=True)


def corpus():
    return data.parallel(["en", "fr", "zh"]).head(12)


@pytest.fixture
def table():
    """The step table, restored in place (order included) after the test."""
    saved = dict(steps.STEPS)
    yield steps.STEPS
    steps.STEPS.clear()
    steps.STEPS.update(saved)


def only(table, *names):
    """Keep only these steps of the table, in its order."""
    kept = {name: step for name, step in table.items() if name in names}
    table.clear()
    table.update(kept)


def test_a_corrupt_manifest_beside_any_steps_folder_is_resumed_not_refused(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "manifest.json").write_text('{"kind": "tl_multilingual.Study", "steps": {')
    for step in steps.STEPS.values():
        target = out / step.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.mkdir(exist_ok=True) if "." not in target.name else target.write_text("{}")
    assert (out / "stage_effects").is_dir()
    check_output_folder(out, command="run")  # every entry is one a study writes
    (out / "notes.txt").write_text("mine")
    with pytest.raises(tlm.TLMultilingualError, match=r"corrupt.*notes.txt"):
        check_output_folder(out, command="run")


def test_what_a_study_writes_comes_from_the_step_table():
    assert study_entries() == {"manifest.json", "tables", "figures", "report.html", "checkpoints",
                               "statistics", "neurons", "lens", "stages.json", "deactivation",
                               "stage_effects", "sharing"}


@pytest.mark.parametrize("setting, value", [("held_out", 5), ("min_held_out", 3), ("seed", 1),
                                            ("sharing_items", 2)])
def test_the_sharing_key_covers_the_settings_that_choose_its_items(tmp_path, setting, value):
    lm = tlm.adapt(tiny.bridge("gpt2"))
    settings = StudySettings(held_out=0.3, min_held_out=4, min_train_texts=4, sharing_items=3)
    first = Study(tmp_path, lm, corpus(), settings)
    changed = Study(tmp_path, lm, corpus(), StudySettings(**{**vars(settings), setting: value}))
    step = steps.STEPS["sharing"]
    assert first.key(step) != changed.key(step)
    assert first.key(step) == Study(tmp_path, lm, corpus(), settings).key(step)


def test_changing_the_seed_recomputes_the_sharing_classes_on_the_new_items(tmp_path, table):
    only(table, "sharing")
    lm = tlm.adapt(tiny.bridge("gpt2"))
    messages = []
    Study(tmp_path, lm, corpus(), SMALL, log=messages.append).run()
    reseeded = StudySettings(**{**vars(SMALL), "seed": 5})
    study = Study(tmp_path, lm, corpus(), reseeded, log=messages.append)
    study.run()
    assert not any("up to date" in m for m in messages)
    saved = tlm.Sharing.load(tmp_path / "sharing")
    expected = tlm.sharing(lm, steps.sharing_items(study))
    assert saved.item_ids == expected.item_ids and (saved.counts() == expected.counts()).all()


def test_a_key_lists_a_dependency_the_step_reads(tmp_path):
    lm = tlm.adapt(tiny.bridge("gpt2"))
    study = Study(tmp_path, lm, corpus(), SMALL)
    with pytest.raises(tlm.TLMultilingualError, match=r"'neurons' depends on \['statistics'\]"):
        study.key(steps.STEPS["neurons"])
    study.keys["statistics"] = "a"
    one = study.key(steps.STEPS["neurons"])
    study.keys["statistics"] = "b"
    assert study.key(steps.STEPS["neurons"]) != one
    typo = steps.Step("typo", "nothing", path="typo", result=object, run=lambda study, done: None,
                      settings=("n_bootstrap",))
    with pytest.raises(tlm.TLMultilingualError, match="n_bootstrap"):
        study.key(typo)


def test_a_toy_step_is_one_entry_and_the_study_runs_saves_resumes_and_reports_it(
    tmp_path, table, monkeypatch
):
    only(table, "statistics")
    table["toy"] = toy_experiment.STEP
    lm = tlm.adapt(tiny.bridge("gpt2"))
    messages = []
    study = Study(tmp_path, lm, corpus(), SMALL, log=messages.append)
    manifest = study.run()
    assert manifest["steps"]["toy"]["output"] == "toy" and "[2/3] toy done" in " ".join(messages)
    saved = pd.read_csv(tmp_path / "toy" / "cells.csv").set_index("language")
    expected = tlm.perplexity(lm, study.evaluation).set_index("language")
    assert saved["perplexity"].to_dict() == pytest.approx(expected["perplexity"].to_dict(),
                                                          rel=1e-9)
    assert saved["mean_nll"].map(math.exp).to_dict() == pytest.approx(saved["perplexity"].to_dict())
    # the report wrote the table the step declares
    written = pd.read_csv(tmp_path / "tables" / "toy.csv").set_index("language")
    assert written["perplexity"].to_dict() == pytest.approx(saved["perplexity"].to_dict())
    recorded = json.loads((tmp_path / "manifest.json").read_text())["steps"]["toy"]
    assert recorded["settings"]["eval_texts"] == 2

    messages.clear()
    monkeypatch.setattr(toy_experiment, "toy_effect",
                        lambda *a, **k: pytest.fail("recomputed an up-to-date step"))
    Study(tmp_path, lm, corpus(), SMALL, log=messages.append).run()
    assert sum("up to date" in m for m in messages) == 2

    # A corrupt manifest: the folder check knows the toy step's folder as a study's own.
    (tmp_path / "manifest.json").write_text("{")
    check_output_folder(tmp_path, command=None)
    del table["toy"]
    with pytest.raises(tlm.TLMultilingualError, match="toy"):
        check_output_folder(tmp_path, command=None)


def test_a_step_the_data_do_not_allow_is_skipped_and_its_dependants_see_none(tmp_path, table):
    only(table, "lens")
    seen = {}

    def after_lens(study, done):
        seen.update(done)
        return toy_experiment.toy_effect(study.lm, study.evaluation)

    table["after"] = steps.Step("after", "after the lens", path="after",
                                result=toy_experiment.ToyEffect, run=after_lens, depends=("lens",))
    messages = []
    # No word list: no lens prompts.
    study = Study(tmp_path, tiny.bridge("gpt2"), corpus(), SMALL, log=messages.append)
    manifest = study.run()
    assert seen == {"lens": None} and "lens" not in manifest["steps"] and study.keys["lens"] is None
    assert any("lens: skipped (no word list" in m for m in messages)
    assert not (tmp_path / "lens").exists() and (tmp_path / "after" / "cells.csv").is_file()


def test_the_table_runs_in_an_order_where_every_dependency_comes_first():
    seen = set()
    for name, step in steps.STEPS.items():
        assert step.name == name and set(step.depends) <= seen, name
        seen.add(name)


def test_the_stage_experiment_is_skipped_when_no_language_has_a_neuron_of_its_variant():
    """With no neuron of the variant in any evaluated language there is nothing to
    deactivate: the step is skipped with its reason instead of failing the study; one
    such neuron and the experiment runs (here: reaches the model, which the stand-in
    refuses)."""
    from types import SimpleNamespace

    import torch

    langs = ("en", "fr")
    membership = torch.zeros(4, 8, 2, dtype=torch.bool)
    neurons = tlm.LanguageNeurons(langs, membership, membership.any(-1), None, method="reference")
    study = SimpleNamespace(settings=SMALL, evaluation=SimpleNamespace(languages=langs))
    done = {"stages": SimpleNamespace(supported=True), "neurons": {SMALL.method: neurons}}
    skipped = steps.STEPS["stage_effects"].run(study, done)
    assert isinstance(skipped, steps.Skip)
    assert "no language has a 'specific' neuron" in skipped.reason
    membership[2, 5, 1] = True
    neurons = tlm.LanguageNeurons(langs, membership, membership.any(-1), None, method="reference")
    done["neurons"] = {SMALL.method: neurons}
    with pytest.raises(AttributeError):  # past the check: the stand-in study has no words
        steps.STEPS["stage_effects"].run(study, done)
