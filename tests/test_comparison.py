"""Comparing two checkpoints: planted changes are reported exactly; mismatches refused."""

from __future__ import annotations

import pytest
import torch
from conftest import require

import tl_multilingual as tlm

LANGS = ["en", "zh", "de"]
HIGH, LOW, TOKENS = 0.9, 0.01, 1000


def stats_from(specific, related, general, *, width=50, **kwargs):
    """Layer 0 neurons with planted classes: ``specific`` {neuron: language index},
    ``related`` {neuron: (language indices)}, ``general`` [neurons]; layer 1 is quiet."""
    probs = torch.full((2, width, 3), LOW)
    for j, k in specific.items():
        probs[0, j, k] = HIGH
    for j, ks in related.items():
        probs[0, j, list(ks)] = HIGH
    for j in general:
        probs[0, j] = HIGH
    return tlm.ActivationStats.from_counts(LANGS, [TOKENS] * 3, (probs * TOKENS).round().long(), **kwargs)


BASE = dict(specific={0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2}, related={6: (0, 1), 7: (1, 2), 8: (0, 2)}, general=[9, 10])
# Alignment: neurons 0 and 1 become related (shared with de), neurons 11 and 12 become general.
ALIGNED = dict(specific={2: 2, 3: 0, 4: 1, 5: 2}, related={0: (0, 2), 1: (1, 2), 6: (0, 1), 7: (1, 2), 8: (0, 2)},
               general=[9, 10, 11, 12])
PARAMS = dict(lam=0.1, top_rate=0.09, bar_ratio=0.9)


@pytest.fixture
def planted():
    return tlm.compare(stats_from(**BASE), stats_from(**ALIGNED), trained_languages=["zh", "de"], **PARAMS)


def test_identification_recovers_the_planted_classes(planted):
    assert planted.before.specific().indices()[:, 1].tolist() == [0, 1, 2, 3, 4, 5]
    assert planted.after.related().indices()[:, 1].tolist() == [0, 1, 6, 7, 8]
    assert planted.after.general().indices()[:, 1].tolist() == [9, 10, 11, 12]


def test_class_changes_report_exactly_the_planted_changes(planted):
    frame = planted.class_changes().set_index(["layer", "class"])
    assert frame.loc[(0, "specific"), ["before", "after", "change"]].tolist() == [6, 4, -2]
    assert frame.loc[(0, "related"), ["before", "after", "change"]].tolist() == [3, 5, 2]
    assert frame.loc[(0, "general"), ["before", "after", "change"]].tolist() == [2, 4, 2]
    assert (frame.loc[1, "change"] == 0).all()


def test_transitions_and_shared_by_n(planted):
    moves = planted.transitions()
    assert moves.groupby("layer")["count"].sum().tolist() == [50, 50]  # every neuron counted once
    layer0 = moves[(moves.layer == 0) & (moves["from"] != moves["to"]) & (moves["count"] > 0)]
    assert sorted(zip(layer0["from"], layer0["to"], layer0["count"])) == [("other", "general", 2), ("specific", "related", 2)]
    matrix = planted.transition_matrix(0)
    assert matrix.loc["specific", "related"] == 2 and matrix.to_numpy().sum() == 50
    shared = planted.shared_by_n().set_index("n_languages")
    assert shared.loc[1, ["before", "after"]].tolist() == [6, 4]
    assert shared.loc[2, ["before", "after"]].tolist() == [3, 5]
    assert shared.loc[3, ["before", "after"]].tolist() == [2, 4]


def test_per_language_and_overlap(planted):
    table = planted.per_language().set_index(["language", "class"])
    assert table.loc[("en", "specific"), "change"] == -1  # neuron 0 left en-specific
    assert table.loc[("zh", "specific"), "change"] == -1  # neuron 1 left zh-specific
    assert table.loc[("de", "related"), "change"] == 2  # both now shared with de
    assert table.loc[("en", "related"), "change"] == 1 and table.loc[("zh", "related"), "change"] == 1
    assert not table.loc[("en", "specific"), "trained"] and table.loc[("de", "related"), "trained"]
    groups = planted.per_group().set_index(["group", "class"])
    assert groups.loc[("other", "specific"), "change"] == -1.0
    overlap = planted.overlap().set_index(["class", "language"])
    assert overlap.loc[("specific", None), ["before", "after", "shared"]].tolist() == [6, 4, 4]
    assert overlap.loc[("general", None), "jaccard"] == pytest.approx(2 / 4)


def test_headlines_give_intervals_around_the_changes(planted):
    table = planted.headlines(n_boot=30).set_index("quantity")
    assert table.loc["general", "change"] == 2 and table.loc["related", "change"] == 2
    for quantity, row in table.iterrows():
        assert row["ci_low"] <= row["change"] <= row["ci_high"], quantity
    assert table.loc["related (trained languages)", "change"] == 1.5  # zh +1, de +2
    assert table.loc["related (other languages)", "change"] == 1.0  # en +1


def test_a_model_compared_with_itself_shows_no_change_and_full_overlap():
    stats = stats_from(**BASE)
    same = tlm.compare(stats, stats, **PARAMS)
    assert (same.class_changes()["change"] == 0).all()
    assert (same.shared_by_n()["change"] == 0).all()
    overlap = same.overlap().dropna(subset=["jaccard"])
    assert (overlap["jaccard"] == 1.0).all() and (overlap["kept"] == 1.0).all()
    moves = same.transitions()
    assert (moves[moves["from"] != moves["to"]]["count"] == 0).all()


def test_mismatches_are_refused():
    base = stats_from(**BASE)
    with pytest.raises(tlm.TLMultilingualError, match="shape"):
        tlm.compare(base, stats_from(**BASE, width=60), **PARAMS)
    other = tlm.ActivationStats.from_counts(["en", "zh", "fr"], [TOKENS] * 3, base.active_counts)
    with pytest.raises(tlm.TLMultilingualError, match="languages"):
        tlm.compare(base, other, **PARAMS)
    with pytest.raises(tlm.TLMultilingualError, match="token_policy"):
        tlm.compare(base, stats_from(**BASE, token_policy="last"), **PARAMS)
    with pytest.raises(tlm.TLMultilingualError, match="threshold"):
        tlm.compare(base, stats_from(**BASE, threshold=0.1), **PARAMS)
    a = tlm.identify(base, top_rate=0.09, bar_ratio=0.9, lam=0.1)
    b = tlm.identify(base, top_rate=0.05, bar_ratio=0.9, lam=0.1)
    with pytest.raises(tlm.TLMultilingualError, match="top_rate"):
        tlm.compare(a, b)
    with pytest.raises(tlm.TLMultilingualError, match="mix"):
        tlm.compare(base, a)
    with pytest.raises(tlm.TLMultilingualError, match="trained"):
        tlm.compare(base, base, trained_languages=["fr"], **PARAMS)


def test_series_of_checkpoints():
    series = tlm.compare_series([stats_from(**BASE), stats_from(**ALIGNED), stats_from(**ALIGNED)],
                                labels=["step 0", "step 200", "step 400"], lam=0.1, top_rate=0.09, bar_ratio=0.9)
    totals = series.totals().set_index(["checkpoint", "class"])
    assert totals.loc[("step 200", "specific"), "change"] == -2
    assert totals.loc[("step 400", "general"), "change"] == 2
    assert (series.pairwise(1, 2).class_changes()["change"] == 0).all()


def test_comparison_figures(planted, tmp_path):
    require("matplotlib")
    from tl_multilingual.study import plot

    for name, fig in {"classes": plot.class_changes(planted), "shared": plot.shared_by_n(planted),
                      "languages": plot.language_changes(planted)}.items():
        assert all(p.stat().st_size > 1000 for p in plot.save(fig, tmp_path / name))
