"""Comparing two checkpoints: planted changes are reported exactly; mismatches refused."""

from __future__ import annotations

import math

import numpy as np
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


# -- every table recomputed from the neurons' own masks ------------------------------------


def test_overlap_shares_are_counted_from_the_masks(planted):
    """``kept`` is the share of the neurons before that stay; ``jaccard`` shares over either."""
    rows = planted.overlap()
    assert len(rows) == 1 + 2 * len(LANGS) + 2
    for row in rows.itertuples():
        cls = row[1]
        language = row.language if isinstance(row.language, str) else None  # None: every language
        b, a = (
            n.general().tensor if cls == "general" else getattr(n, cls)(language).tensor
            for n in (planted.before, planted.after)
        )
        shared, either = int((a & b).sum()), int((a | b).sum())
        assert (row.before, row.after, row.shared) == (int(b.sum()), int(a.sum()), shared)
        assert row.kept == pytest.approx(shared / int(b.sum())) if b.any() else math.isnan(row.kept)
        assert row.jaccard == pytest.approx(shared / either) if either else math.isnan(row.jaccard)
    specific = rows[(rows["class"] == "specific") & rows["language"].isna()].iloc[0]
    assert specific["kept"] == pytest.approx(4 / 6) and specific["jaccard"] == pytest.approx(4 / 6)
    related = rows[(rows["class"] == "related") & rows["language"].isna()].iloc[0]
    assert related["kept"] == pytest.approx(3 / 3) and related["jaccard"] == pytest.approx(3 / 5)


def test_counts_tables_are_counted_from_the_class_codes(planted):
    codes = {
        name: neurons.classes()
        for name, neurons in (("before", planted.before), ("after", planted.after))
    }
    names = {"specific": 0, "related": 1, "general": 2}
    for row in planted.class_changes().itertuples():
        b = int((codes["before"][row.layer] == names[row[2]]).sum())
        a = int((codes["after"][row.layer] == names[row[2]]).sum())
        assert (row.before, row.after, row.change) == (b, a, a - b)
    transitions = planted.transitions()
    order = ("specific", "related", "general", "other")
    for row in transitions.itertuples():

        def code(c):
            return c.clamp_max(3)  # dropped counts as other

        expected = int(
            (
                (code(codes["before"][row.layer]) == order.index(row[2]))
                & (code(codes["after"][row.layer]) == order.index(row.to))
            ).sum()
        )
        assert row.count == expected
    groups = planted.per_group().set_index(["group", "class"])
    table = planted.per_language()
    for (group, cls), values in groups.iterrows():
        part = table[(table["trained"] == (group == "trained")) & (table["class"] == cls)]
        assert values["before"] == part["before"].mean() and values["after"] == part["after"].mean()


def lam_stats(third, width=100, seed=0):
    """Statistics whose lambda search ends inside its range, at a lambda that grows with
    ``third`` (the third language's probability of ten nearly general neurons)."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.tensor([0.1, 0.1, 0.02]).repeat(2, width, 1)
    probs[:, :10] = torch.tensor([0.95, 0.95, third])
    probs[:, 10:15] = torch.tensor([0.6, 0.01, 0.01])
    probs = (probs + 0.01 * torch.rand(probs.shape, generator=generator)).clamp(0, 1)
    return tlm.ActivationStats.from_counts(LANGS, [1000] * 3, (probs * 1000).round().long())


def test_the_lam_option_decides_which_checkpoints_lambda_is_used():
    base, aligned = lam_stats(0.3), lam_stats(0.7)
    kwargs = dict(top_rate=0.1, bar_ratio=0.85)
    own_base, own_aligned = tlm.identify(base, **kwargs).lam, tlm.identify(aligned, **kwargs).lam
    assert 0 < own_base < own_aligned < 0.2  # the two sweeps differ, both inside the range
    by_base = tlm.compare(base, aligned, **kwargs)  # default: the base model's lambda for both
    assert by_base.before.lam == by_base.after.lam == own_base
    assert torch.equal(
        by_base.after.membership, tlm.identify(aligned, lam=own_base, **kwargs).membership
    )
    each = tlm.compare(base, aligned, lam="each", **kwargs)
    assert (each.before.lam, each.after.lam) == (own_base, own_aligned)
    fixed = tlm.compare(base, aligned, lam=0.05, **kwargs)
    assert fixed.before.lam == fixed.after.lam == 0.05
    lape = tlm.compare(base, aligned, method="lape", **kwargs)
    assert lape.before.method == lape.after.method == "lape" and lape.after.lam is None
    assert lape.before.params["top_rate"] == 0.1 and lape.before.params["bar_ratio"] == 0.85
    series = tlm.compare_series([base, aligned, aligned], **kwargs)
    assert [n.lam for n in series.neurons] == [own_base] * 3
    series = tlm.compare_series([base, aligned, aligned], lam="each", **kwargs)
    assert [n.lam for n in series.neurons] == [own_base, own_aligned, own_aligned]
    series = tlm.compare_series([base, aligned], lam=0.05, **kwargs)
    assert [n.lam for n in series.neurons] == [0.05, 0.05]
    assert [n.params["top_rate"] for n in series.neurons] == [0.1, 0.1]


def quantities(neurons, trained):
    """The headline quantities, counted here from the masks."""
    summary = neurons.summary().set_index("language")
    out = {
        "specific": neurons.specific().count(),
        "related": neurons.related().count(),
        "general": neurons.general().count(),
    }
    for group, langs in (
        ("trained", [x for x in LANGS if x in trained]),
        ("other", [x for x in LANGS if x not in trained]),
    ):
        for cls in ("specific", "related"):
            out[f"{cls} ({group} languages)"] = float(summary.loc[langs, cls].mean())
    return out


@pytest.mark.parametrize("case", ["planted", "swept"])
def test_headline_intervals_are_quantiles_of_redrawn_and_reidentified_changes(case):
    if case == "planted":  # classes that change, with a fixed lambda
        base, aligned = stats_from(**BASE), stats_from(**ALIGNED)
        comparison = tlm.compare(base, aligned, trained_languages=["zh"], **PARAMS)
    else:  # lambdas found by the search
        base, aligned = lam_stats(0.3), lam_stats(0.7)
        comparison = tlm.compare(
            base, aligned, trained_languages=["zh"], top_rate=0.1, bar_ratio=0.85
        )
    table = comparison.headlines(n_boot=40, ci=0.9, seed=3).set_index("quantity")
    # The documented replicate: both models' counts redrawn (base first), neurons
    # re-identified with their recipes (and so their lambdas).
    generator = torch.Generator().manual_seed(3)
    changes = {k: [] for k in table.index}
    for _ in range(40):
        before = tlm.identify(base.redraw(generator), **comparison.before.recipe)
        after = tlm.identify(aligned.redraw(generator), **comparison.after.recipe)
        b, a = quantities(before, ["zh"]), quantities(after, ["zh"])
        for key in changes:
            changes[key].append(a[key] - b[key])
    point_b, point_a = quantities(comparison.before, ["zh"]), quantities(comparison.after, ["zh"])
    for key, row in table.iterrows():
        values = np.array(changes[key])
        assert (row["before"], row["after"]) == (point_b[key], point_a[key])
        assert row["change"] == point_a[key] - point_b[key]
        assert row["ci_low"] == pytest.approx(np.quantile(values, 0.05))
        assert row["ci_high"] == pytest.approx(np.quantile(values, 0.95))
        if row["change"]:
            assert row["opposite_sign_share"] == pytest.approx(
                np.mean(np.sign(values) != np.sign(row["change"]))
            )
        else:
            assert math.isnan(row["opposite_sign_share"])
    if case == "planted":
        assert table["change"].abs().sum() > 0 and table["opposite_sign_share"].notna().any()
