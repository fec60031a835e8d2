"""Harness tasks per language under deactivation, with random-neuron controls: local task
definitions (YAML over JSON lines) on a tiny model, checked against the library's own
continuation scores of the same items."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tiny
from conftest import require

import tl_multilingual as tlm
from tl_multilingual import resample
from tl_multilingual.causal import evaluate
from tl_multilingual.experiments.benchmarks import item_scores
from tl_multilingual.experiments.engine import control_seed

lm_eval = require("lm_eval")
from lm_eval.tasks import TaskManager  # noqa: E402

# Items whose answers the deactivations below turn around on the tiny model (near ties).
ITEMS = {
    "en": [
        {"question": "The cat sleeps on the", "choices": ["mat", "market", "morning"], "label": 0},
        {"question": "In the morning we", "choices": ["morning", "dog"], "label": 0},
        {"question": "My friend has a", "choices": ["morning", "dog"], "label": 0},
        {"question": "We walked to the", "choices": ["morning", "dog"], "label": 0},
        {"question": "The sun is", "choices": ["mat", "warm"], "label": 1},
    ],
    "fr": [
        {"question": "Le chat dort sur le", "choices": ["tapis", "chien"], "label": 0},
        {"question": "Le matin nous", "choices": ["tapis", "maison"], "label": 0},
        {"question": "Le soleil est", "choices": ["chaud", "maison"], "label": 0},
        {"question": "Nous avons marché au", "choices": ["matin", "chat"], "label": 0},
        {"question": "Le matin nous", "choices": ["matin", "chat"], "label": 1},
    ],
}
TASK = """task: tiny_{lang}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""
TASKS = {"en": "tiny_en", "fr": "tiny_fr"}
VALUE = 20.0  # deactivated neurons set far from their range, so the answers move


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    for lang, items in ITEMS.items():
        data = folder / f"{lang}.jsonl"
        data.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items),
                        encoding="utf-8")
        (folder / f"{lang}.yaml").write_text(TASK.format(lang=lang, data=data), encoding="utf-8")
    (folder / "group.yaml").write_text(
        "group: tiny_both\ntask: [tiny_en, tiny_fr]\naggregate_metric_list:\n"
        "  - metric: acc\n    weight_by_size: true\n", encoding="utf-8")
    return TaskManager(include_path=str(folder), include_defaults=False)


@pytest.fixture(scope="module")
def setup():
    lm = tlm.adapt(tiny.bridge("llama", n_layers=2))
    stats = tlm.collect_stats(lm, tlm.Corpus.from_dict(tiny.SAMPLE_TEXT), progress=False)
    neurons = tlm.identify(stats, method="lape", top_rate=0.1)
    return lm, neurons


def correct(lm, lang):
    """Each item's correctness from the library's own continuation scores (argmax of the
    summed log-probabilities of ' choice' after the question)."""
    items = {lang: [tlm.MultipleChoice(i["question"], tuple(" " + c for c in i["choices"]),
                                       i["label"]) for i in ITEMS[lang]]}
    scores = evaluate.choice_scores(lm, items)
    best = np.array([int(np.argmax(s)) for s in scores["scores"]])
    return (best == np.array([i["label"] for i in ITEMS[lang]])).astype(float)


def test_every_cell_is_the_accuracy_of_the_librarys_own_scores(setup, manager, tmp_path):
    lm, neurons = setup
    seed, n_boot = 3, 200
    result = tlm.benchmark_effects(lm, neurons, TASKS, classes=["language"], value=VALUE,
                                   task_manager=manager, controls=2, seed=seed, n_boot=n_boot,
                                   progress=False)
    frame = result.to_frame().set_index(["ablated", "evaluated"])
    assert len(frame) == 4 and result.metric == "acc,none"
    base = {lang: correct(lm, lang) for lang in TASKS}
    rng = np.random.default_rng(seed)
    draws = {lang: resample.draws(len(ITEMS[lang]), n_boot, rng) for lang in TASKS}
    moved = 0.0
    for ablated in TASKS:
        mask = neurons.language(ablated)
        assert mask.count() > 0
        with tlm.ablate(lm, mask, value=VALUE):
            hit = {lang: correct(lm, lang) for lang in TASKS}
        controls = []
        for random_mask in mask.controls(2, seed=control_seed(seed, 0)):
            with tlm.ablate(lm, random_mask, value=VALUE):
                controls.append({lang: correct(lm, lang).mean() for lang in TASKS})
        for lang in TASKS:
            row = frame.loc[(ablated, lang)]
            assert row["task"] == TASKS[lang] and row["n_items"] == len(ITEMS[lang])
            assert row["n_neurons"] == mask.count()
            assert row["baseline"] == pytest.approx(base[lang].mean())
            assert row["value"] == pytest.approx(hit[lang].mean())
            assert row["change"] == pytest.approx(hit[lang].mean() - base[lang].mean())
            index = draws[lang]
            replicates = hit[lang][index].mean(1) - base[lang][index].mean(1)
            low, high = np.quantile(replicates, [0.025, 0.975])
            assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
            ctrl = np.array([c[lang] for c in controls]) - base[lang].mean()
            assert row["control_change"] == pytest.approx(ctrl.mean())
            assert row["control_change_sd"] == pytest.approx(ctrl.std(ddof=1))
            assert row["effect_over_control"] == pytest.approx(row["change"] - ctrl.mean())
            got = result.controls.query("ablated == @ablated and evaluated == @lang")["value"]
            assert got.tolist() == pytest.approx([c[lang] for c in controls])
            moved += abs(row["change"])
    assert moved > 0  # the deactivations reached the harness's model
    matrix = result.matrix()
    assert list(matrix.index) == ["en", "fr"] and list(matrix.columns) == ["en", "fr"]
    assert matrix.loc["fr", "en"] == pytest.approx(frame.loc[("fr", "en"), "change"])
    require("matplotlib")
    tlm.plot.save(tlm.plot.deactivation_heatmap(result, value="change"), tmp_path / "heatmap")
    assert (tmp_path / "heatmap.png").stat().st_size > 0

    again = tlm.BenchmarkEffects.load(result.save(tmp_path / "bench"))
    pd.testing.assert_frame_equal(again.frame, result.frame, check_dtype=False)
    pd.testing.assert_frame_equal(again.controls, result.controls, check_dtype=False)
    assert again.metric == "acc,none" and again.record["tasks"] == TASKS
    assert again.record["model"]["name"] == lm.name
    assert again.provenance["shape"] == (lm.n_layers, lm.d_mlp)
    assert again.record["recipe"]["controls"] == 2 and "lm_eval" in again.record["versions"]
    shared = tlm.BenchmarkEffects.from_pretrained(tmp_path / "bench")  # the Hub's loader
    pd.testing.assert_frame_equal(shared.frame, result.frame, check_dtype=False)
    card = tlm.hub.model_card(tmp_path / "bench", tlm.BenchmarkEffects, "you/benchmark-effects")
    assert card.data.library_name == "tl-multilingual" and "benchmark-effects" in card.data.tags
    assert lm.name in card.text and "tl_multilingual.BenchmarkEffects" in card.text
    with pytest.raises(tlm.SaveError):
        tlm.DeactivationResult.load(tmp_path / "bench")
    with pytest.raises(tlm.SaveError):
        tlm.BenchmarkEffects.load(tmp_path / "nothing")


def test_a_group_task_is_scored_over_all_its_items_and_limit_is_passed(setup, manager):
    lm, neurons = setup
    result = tlm.benchmark_effects(lm, neurons, {"en": "tiny_both"}, classes=["language"],
                                   task_manager=manager,
                                   controls=0, limit=3, n_boot=20, progress=False)
    row = result.to_frame().iloc[0]
    assert row["n_items"] == 6 and row["task"] == "tiny_en,tiny_fr"
    expected = np.concatenate([correct(lm, "en")[:3], correct(lm, "fr")[:3]]).mean()
    assert row["baseline"] == pytest.approx(expected)
    assert np.isnan(row["control_change"])


def test_bad_requests_are_refused(setup, manager):
    lm, neurons = setup
    with pytest.raises(tlm.TLMultilingualError, match="use_cache"):
        tlm.benchmark_effects(lm, neurons, TASKS, task_manager=manager,
                              harness_options={"use_cache": "x"}, progress=False)
    with pytest.raises(tlm.TLMultilingualError, match="tasks is empty"):
        tlm.benchmark_effects(lm, neurons, {}, task_manager=manager, progress=False)
    with pytest.raises(tlm.TLMultilingualError, match="no neurons"):
        tlm.benchmark_effects(lm, neurons, TASKS, languages=["sw"], task_manager=manager,
                              progress=False)
    with pytest.raises(tlm.TLMultilingualError, match="it has"):
        tlm.benchmark_effects(lm, neurons, TASKS, metric="exact_match", task_manager=manager,
                              controls=0, progress=False)


def test_item_scores_refuse_corpus_level_metrics_and_non_mean_aggregates():
    samples = {"t": [{"doc_id": 1, "filter": "none", "metrics": ["acc"], "acc": 1.0},
                     {"doc_id": 0, "filter": "none", "metrics": ["acc"], "acc": 0.0}]}
    results = {"samples": samples, "results": {"t": {"acc,none": 0.5}}}
    scores = item_scores(results, {"en": "t"})
    assert scores["doc_id"].tolist() == [0, 1] and scores["score"].tolist() == [0.0, 1.0]
    with pytest.raises(tlm.TLMultilingualError, match="not the mean"):
        item_scores({**results, "results": {"t": {"acc,none": 0.9}}}, {"en": "t"})
    bleu = {"samples": {"t": [{"doc_id": 0, "filter": "none", "metrics": ["bleu"],
                               "bleu": ("ref", "hyp")}]}}
    with pytest.raises(tlm.TLMultilingualError, match="corpus-level"):
        item_scores(bleu, {"en": "t"}, "bleu")
    with pytest.raises(tlm.TLMultilingualError, match="log_samples"):
        item_scores({"results": {}}, {"en": "t"})
