"""Wang et al.'s (2024) experiments, every reported number recomputed here: the boosting
table (accuracy, log-probability, paired intervals, controls drawn per item) and the
sharing profiles of correct and incorrect items."""

from __future__ import annotations

import numpy as np
import pytest

import tl_multilingual as tlm
from tl_multilingual.experiments.sharing_experiments import (
    boost_experiment,
    correct_vs_incorrect,
    item_correctness,
)
from tl_multilingual.neurons.sharing_classes import SHARING_CLASSES, sharing

N_BOOT = 3000


@pytest.fixture(scope="module")
def planted():
    toy = tlm.models.planted()
    lm = tlm.adapt(toy.model)
    picks = [30, 31, 32, 33, 34, 35, 30]  # the last item repeats the first under another id
    records = [
        {
            "id": f"q{n}",
            "text": {"en": toy.texts["en"][i], "ru": toy.texts["ru"][i]},
            "answer": {"en": toy.answer, "ru": toy.answer},
        }
        for n, i in enumerate(picks)
    ]
    items = tlm.ParallelItems.from_records(records)
    classes = sharing(lm, items, progress=False)
    return lm, items, classes


def one(items, i):
    """Item ``i`` alone, as a collection of its own."""
    return tlm.ParallelItems([list(items)[i]], languages=items.languages)


def scores(lm, items, i, hook=None):
    """(correct, logprob) of item ``i`` per language, under an optional boost."""
    if hook is None:
        frame = item_correctness(lm, one(items, i))
    else:
        with tlm.boost(lm, hook[0], factor=hook[1]):
            frame = item_correctness(lm, one(items, i))
    frame = frame.set_index("language").loc[list(items.languages)]
    return frame["correct"].to_numpy(float), frame["logprob"].to_numpy(float)


def test_the_boosting_table_matches_runs_made_here(planted, monkeypatch):
    lm, items, classes = planted
    drawn = []  # every control set the experiment draws, in order, with its own mask
    original = tlm.NeuronMask.controls

    def recording(self, n, *, seed=0):
        masks = original(self, n, seed=seed)
        drawn.append((self, masks))
        return masks

    monkeypatch.setattr(tlm.NeuronMask, "controls", recording)
    table = boost_experiment(
        lm,
        items,
        classes=["all_shared"],
        factors=[3.0],
        sharing=classes,
        controls=2,
        seed=3,
        n_boot=N_BOOT,
        progress=False,
    )
    monkeypatch.undo()
    n = len(items)
    masks = [classes.mask(i, "all_shared") for i in range(n)]
    assert [hit for hit, _ in drawn] == masks  # one draw per item, for its own mask
    # Items with the same mask still get their own random neurons: each block its own seed.
    first, repeat = drawn[0][1], drawn[-1][1]
    assert masks[0] == masks[-1] and all(a != b for a, b in zip(first, repeat))
    base = [scores(lm, items, i) for i in range(n)]
    hit = [scores(lm, items, i, (masks[i], 3.0)) for i in range(n)]
    ctrl = [
        [scores(lm, items, i, (c, 3.0)) for c in controls] for i, (_, controls) in enumerate(drawn)
    ]
    rng = np.random.default_rng(0)
    draws = rng.integers(0, n, size=(N_BOOT, n))
    rows = table.set_index("language")
    assert list(table["class"]) == ["all_shared"] * 2 and list(table["factor"]) == [3.0] * 2
    for p, lang in enumerate(items.languages):
        row = rows.loc[lang]
        for k, name in ((0, "accuracy"), (1, "logprob")):
            b = np.array([base[i][k][p] for i in range(n)])
            h = np.array([hit[i][k][p] for i in range(n)])
            assert row[f"baseline_{name}"] == pytest.approx(b.mean())
            assert row[name] == pytest.approx(h.mean())
            assert row[f"{name}_change"] == pytest.approx(h.mean() - b.mean())
            low, high = np.quantile(h[draws].mean(1) - b[draws].mean(1), [0.025, 0.975])
            assert row[f"{name}_ci_low"] == pytest.approx(low, abs=0.02 + 0.1 * (high - low)), (
                lang,
                name,
            )
            assert row[f"{name}_ci_high"] == pytest.approx(high, abs=0.02 + 0.1 * (high - low)), (
                lang,
                name,
            )
        assert row["mean_neurons"] == pytest.approx(np.mean([m.count() for m in masks]))
        control_correct = np.array(
            [[c[0][p] for c in per_item] for per_item in ctrl]
        )  # [item, control]
        control_logprob = np.array([[c[1][p] for c in per_item] for per_item in ctrl])
        base_logprob = np.array([base[i][1][p] for i in range(n)])
        assert row["control_accuracy"] == pytest.approx(control_correct.mean())
        assert row["control_logprob_change"] == pytest.approx(
            (control_logprob - base_logprob[:, None]).mean()
        )


def test_profiles_of_correct_and_incorrect_items_are_means_over_those_items(planted):
    lm, items, classes = planted
    measured = item_correctness(lm, items)
    correctness = measured.assign(
        correct=[i % 3 == 0 for i in range(len(measured))]
    )  # both groups filled
    frame = correct_vs_incorrect(lm, items, sharing=classes, correctness=correctness)
    counts = classes.counts().numpy() * 100.0 / classes.d_mlp  # [item, layer, class]
    for (lang, correct), group in correctness.groupby(["language", "correct"]):
        picks = [classes.item_ids.index(i) for i in group["id"]]
        part = frame[(frame["language"] == lang) & (frame["correct"] == correct)]
        assert (part["n_items"] == len(picks)).all()
        for k, cls in enumerate(SHARING_CLASSES):
            got = part[part["class"] == cls].sort_values("layer")["percent"].to_numpy()
            assert np.allclose(got, counts[picks][:, :, k].mean(0))
    assert len(frame) == correctness.groupby(["language", "correct"]).ngroups * classes.n_layers * 4
    # Computed here when not given: the same table.
    again = correct_vs_incorrect(lm, items)
    expected = correct_vs_incorrect(lm, items, sharing=classes, correctness=measured)
    assert again.equals(expected)


def test_item_correctness_reads_the_gold_answers_log_likelihood(planted):
    from tl_multilingual.model.readout import last_logits

    lm, items, _ = planted
    frame = item_correctness(lm, items)
    assert list(frame.columns) == ["id", "language", "correct", "logprob"] and len(
        frame
    ) == 2 * len(items)
    for item in list(items)[:3]:
        for lang in items.languages:
            ids = lm.tokenize([item.texts[lang]])[0]
            answer_ids = lm.tokenize([item.texts[lang] + item.answer(lang)])[0][len(ids) :]
            logits = last_logits(lm, lm.pad([ids], side="left"))[0].double()
            logprob = float(logits.log_softmax(-1)[answer_ids[0]])
            row = frame[(frame["id"] == item.id) & (frame["language"] == lang)].iloc[0]
            assert len(answer_ids) == 1 and row["logprob"] == pytest.approx(logprob, abs=1e-4)
            assert bool(row["correct"]) == (int(logits.argmax()) == answer_ids[0])
