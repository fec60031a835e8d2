"""Identification: exact parity with the reference releases, and LAPE against a plain
implementation written from the formula."""

from __future__ import annotations

import importlib
import math
import re
import typing
import warnings

import pytest
import torch
from conftest import NJUNLP_TAG

import tl_multilingual as tlm
from tl_multilingual.neurons.identification import LAMBDA_GRID, ternary


@pytest.fixture(scope="module")
def njunlp(fixtures, njunlp_stats):
    released = torch.load(fixtures / "njunlp_mistral_mgsm" / f"mask.{NJUNLP_TAG}", weights_only=True)
    return njunlp_stats, released


def test_ternary_reproduces_the_released_mask_exactly(njunlp):
    stats, released = njunlp
    neurons = tlm.identify(stats, method="ternary", top_rate=0.01, lam="auto")
    assert neurons.lam == 0.109375
    mine = neurons.to_reference_format()
    entries = {(k, l, int(n)) for k, per in enumerate(mine) for l, idx in enumerate(per) for n in idx}
    reference = {(k, l, int(n)) for k, per in enumerate(released) for l, idx in enumerate(per) for n in idx}
    assert len(reference) == 6307
    assert entries == reference
    for ours, theirs in zip(mine, released):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b.long())


def test_ternary_diagnostics_on_the_fixture(njunlp):
    stats, _ = njunlp
    neurons = tlm.identify(stats, method="ternary")
    assert neurons.bar == pytest.approx(0.5644, abs=1e-4)
    assert neurons.histogram == [1369, 1866, 617, 310, 153, 127, 59, 40, 27, 20, 0]
    assert neurons.dropped == 1369
    assert neurons.selected().count() == 4588
    assert stats.notes["counts_above_tokens"] > 0  # the documented quirk is reported, not hidden
    # Classes partition the selected neurons that belong to a language.
    specific, related = neurons.specific(), neurons.related()
    assert (specific & related).count() == 0
    assert specific.count() + related.count() == 4588 - 1369
    assert specific.count() == 1866
    # General neurons: above the bar in all languages, over the whole population.
    probs = stats.probabilities()
    assert neurons.general().tensor.equal((probs > neurons.bar).all(-1))


def test_fixed_lambda_and_lambda_zero(njunlp):
    stats, _ = njunlp
    at_zero = tlm.identify(stats, method="ternary", lam=0.0)
    assert at_zero.lam == 0.0
    assert at_zero.selected().count() == 4588
    with pytest.raises(tlm.IdentificationError):
        tlm.identify(stats, method="ternary", lam="big")


def plain_lape(probs, top_rate=0.01, bar_ratio=0.95, filter_rate=0.95):
    """LAPE written from the formula, one neuron at a time (Tang et al.)."""
    n_layers, d_mlp, k_langs = probs.shape
    flat = sorted(probs.flatten().tolist())
    bar = flat[round(bar_ratio * len(flat)) - 1]
    filter_bar = flat[round(filter_rate * len(flat)) - 1] if filter_rate is not None else None
    scored = []
    for layer in range(n_layers):
        for neuron in range(d_mlp):
            p = probs[layer, neuron].tolist()
            total = sum(p)
            entropy = 0.0
            for value in p:
                q = value / total if total > 0 else 0.0
                if q > 0:
                    entropy -= q * math.log(q)
            if filter_bar is not None and not any(v > filter_bar for v in p):
                entropy = math.inf
            scored.append((entropy, layer, neuron))
    chosen = sorted(scored)[: round(top_rate * n_layers * d_mlp)]
    per_language = [set() for _ in range(k_langs)]
    for _, layer, neuron in chosen:
        for k in range(k_langs):
            if probs[layer, neuron, k] > bar:
                per_language[k].add((layer, neuron))
    return per_language


def as_sets(neurons):
    return [
        {(l, int(n)) for l, idx in enumerate(per) for n in idx} for per in neurons.to_reference_format()
    ]


def stats_from_probs(active, tokens):
    langs = ["en", "fr", "de", "zh", "ru", "ja", "ar", "hi", "th", "sw"][: active.shape[-1]]
    return tlm.ActivationStats.from_counts(langs, tokens, active)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("prefilter", [True, False])
def test_lape_matches_the_formula_on_random_stats(seed, prefilter):
    gen = torch.Generator().manual_seed(seed)
    k_langs = 2 + seed
    tokens = torch.randint(50, 200, (k_langs,), generator=gen)
    active = (torch.rand(3, 40, k_langs, generator=gen) ** 3 * tokens).long()
    stats = stats_from_probs(active, tokens)
    neurons = tlm.identify(stats, method="lape", top_rate=0.1, prefilter=prefilter)
    expected = plain_lape(stats.probabilities(), top_rate=0.1, filter_rate=0.95 if prefilter else None)
    assert as_sets(neurons) == expected


ADVERSARIAL = [
    [0, 0, 0],  # all-zero neuron
    [90, 0, 0],  # one language only: entropy exactly 0
    [0, 90, 0],
    [90, 0, 0],  # duplicate: an exact tie
    [50, 50, 50],  # uniform
    [50, 50, 50],
    [95, 95, 0],
    [95, 0, 95],
    [10, 0, 0],
    [0, 0, 10],
]


@pytest.mark.parametrize("bar_ratio", [0.5, 0.7])
@pytest.mark.parametrize("filter_rate", [None, 0.6, 0.8])
def test_lape_matches_the_formula_on_adversarial_stats(bar_ratio, filter_rate):
    tokens = torch.tensor([100, 100, 100])
    active = torch.tensor(ADVERSARIAL * 6, dtype=torch.long).reshape(2, 30, 3)
    stats = stats_from_probs(active, tokens)
    for top_rate in (0.05, 0.1, 0.2, 0.5):
        kwargs = {"prefilter": False} if filter_rate is None else {"prefilter": True, "filter_rate": filter_rate}
        neurons = tlm.identify(stats, method="lape", top_rate=top_rate, bar_ratio=bar_ratio, **kwargs)
        expected = plain_lape(stats.probabilities(), top_rate=top_rate, bar_ratio=bar_ratio, filter_rate=filter_rate)
        assert any(expected), "the case must select neurons above the bar, or it compares nothing"
        assert as_sets(neurons) == expected, (top_rate, filter_rate)


def test_lape_scores_an_all_zero_neuron_zero():
    """Tang et al.: an all-zero neuron has entropy 0, so it ranks with the one-language
    neurons (and before a later one on a tie), yet belongs to no language."""
    active = torch.tensor([[0, 0, 0], [90, 0, 0], [0, 90, 0], [30, 30, 30]]).reshape(1, 4, 3)
    stats = stats_from_probs(active, [100] * 3)
    neurons = tlm.identify(stats, method="lape", top_rate=0.5, bar_ratio=0.8, prefilter=False)
    assert neurons.bar == pytest.approx(0.3)
    assert neurons.language("en").indices().tolist() == [[0, 1]]
    assert neurons.language("fr").count() == 0 and neurons.language("de").count() == 0
    assert as_sets(neurons) == plain_lape(stats.probabilities(), top_rate=0.5, bar_ratio=0.8, filter_rate=None)


def test_a_language_without_tokens_is_rejected_clearly():
    active = torch.zeros(2, 8, 3, dtype=torch.long)
    stats = tlm.ActivationStats.from_counts(["en", "fr", "zh"], [10, 0, 10], active)
    with pytest.raises(tlm.IdentificationError, match="fr"):
        tlm.identify(stats, method="lape")
    with pytest.raises(tlm.IdentificationError, match="fr"):
        tlm.identify(stats, method="ternary")


def test_bad_parameters_are_rejected():
    stats = stats_from_probs(torch.ones(2, 8, 3, dtype=torch.long), [4, 4, 4])
    with pytest.raises(tlm.IdentificationError):
        tlm.identify(stats, method="nope")
    with pytest.raises(tlm.IdentificationError):
        tlm.identify(stats, top_rate=0.0)
    with pytest.raises(tlm.IdentificationError):
        tlm.identify(stats.select(["en"]))


def test_lambda_sweep_works_for_any_number_of_languages():
    gen = torch.Generator().manual_seed(7)
    for k_langs in (2, 3, 5):
        tokens = torch.full((k_langs,), 100)
        active = (torch.rand(4, 50, k_langs, generator=gen) * 100).long()
        neurons = tlm.identify(stats_from_probs(active, tokens), method="ternary", top_rate=0.05)
        assert 0.0 <= neurons.lam <= 0.2
        assert neurons.histogram[k_langs] == 0  # no selected neuron in all languages


LAPE_COUNTS = {  # from the fixture README: selected, then per language
    "LLaMA-2-7B": (3523, {"en": 95, "zh": 583, "fr": 1022, "es": 838, "vi": 836, "id": 1068, "ja": 582}),
    "Mistral-7B": (4588, {"en": 76, "zh": 1190, "fr": 919, "es": 838, "vi": 1554, "id": 1445}),
    "BLOOM-7B": (4915, {"en": 445, "zh": 653, "fr": 680, "es": 918, "vi": 551, "id": 2823}),
}


@pytest.mark.parametrize("name", sorted(LAPE_COUNTS))
def test_lape_reference_files_load_and_round_trip(fixtures, name, tmp_path):
    selected, per_language = LAPE_COUNTS[name]
    raw = torch.load(fixtures / "lape" / f"{name}.neuron.pth", weights_only=True)
    neurons = tlm.LanguageNeurons.from_reference_format(raw, list(per_language))
    assert neurons.selected().count() == selected
    assert neurons.summary().set_index("language")["total"].to_dict() == per_language
    back = neurons.to_reference_format()
    for ours, theirs in zip(back, raw):
        for a, b in zip(ours, theirs):
            assert torch.equal(a, torch.as_tensor(b).long())
    with pytest.raises(tlm.IdentificationError, match="general"):
        neurons.general()
    neurons.save(tmp_path / "n")
    again = tlm.LanguageNeurons.load(tmp_path / "n")
    assert again.to_reference_format().__len__() == len(per_language)
    assert torch.equal(again.membership, neurons.membership)


def test_lape_output_round_trips_through_the_reference_format():
    gen = torch.Generator().manual_seed(3)
    active = (torch.rand(3, 64, 4, generator=gen) ** 2 * 100).long()
    stats = stats_from_probs(active, [100] * 4)
    neurons = tlm.identify(stats, method="lape", top_rate=0.05)
    back = tlm.LanguageNeurons.from_reference_format(neurons.to_reference_format(), stats.languages, d_mlp=64)
    assert torch.equal(back.membership, neurons.membership)
    for lang in stats.languages:
        assert back.language(lang) == neurons.language(lang)


def two_language_stats(pairs, width=20, tokens=10_000, quiet=100):
    """One layer of ``width`` neurons, quiet but for ``{neuron: (count en, count fr)}``."""
    counts = torch.full((1, width, 2), quiet)
    for neuron, pair in pairs.items():
        counts[0, neuron] = torch.tensor(pair)
    return tlm.ActivationStats.from_counts(["en", "fr"], [tokens, tokens], counts)


def test_lambda_search_ending_at_its_upper_bound_warns_and_a_wider_range_is_offered():
    stats = two_language_stats({0: (3000, 100), 1: (100, 3000), 2: (9000, 9000), 3: (5000, 100)})
    with pytest.warns(UserWarning, match=r"upper bound 0\.2 of lam_range=\(0, 0\.2\).*binds at lambda") as caught:
        neurons = tlm.identify(stats, top_rate=0.1)
    assert neurons.lam == 0.2
    assert neurons.params["lam_search"]["at_bound"] == "upper"
    assert neurons.params["lam_search"]["identified"] and neurons.lambda_identified()
    assert "do not identify" not in str(caught[0].message)
    assert neurons.lambda_sensitivity().empty
    # The advice names a range that holds the binding lambda: following it converges.
    (offer,) = re.findall(r"pass lam_range=\(0, ([0-9.]+)\)", str(caught[0].message))
    binds = float(offer)
    assert binds == neurons.params["lam_search"]["binds_at"]
    probs = stats.probabilities()
    both = lambda lam: int((ternary(probs, lam, top_rate=0.1).above.flatten(0, 1)[  # noqa: E731
        ternary(probs, lam, top_rate=0.1).selected].all(-1)).sum())
    assert both(binds) > 0 and both(binds / 2) == 0  # the first doubling of 0.2 that binds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        followed = tlm.identify(stats, top_rate=0.1, lam_range=(0.0, binds))
    assert 0.2 < followed.lam < binds and followed.params["lam_search"]["at_bound"] is None
    assert followed.histogram[2] == 0  # still no selected neuron in both languages
    assert both(followed.lam) == 0 and both(followed.lam + 2e-3) > 0
    with pytest.warns(UserWarning, match=rf"upper bound 0\.2 .*high={offer}"):
        importlib.import_module("tl_multilingual.neurons.identification").sweep_lambda(stats.probabilities(), top_rate=0.1)


def test_a_lambda_the_data_do_not_identify_is_said_once_with_its_sensitivity(tmp_path):
    # Neuron 2 is active in both languages but less than the one-language neurons are
    # in theirs: no lambda, however large, selects it, so the criterion never binds.
    stats = two_language_stats({0: (9600, 100), 1: (100, 9600), 2: (9200, 9200), 3: (5000, 100)}, width=100)
    assert stats.probabilities()[0, 2].gt(0.01).all()  # above the bar in both languages
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        neurons = tlm.identify(stats, top_rate=0.02)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "the data do not identify lambda" in messages[0]
    assert "lam_range=(" not in messages[0] and "search further" not in messages[0]
    assert neurons.lam == 0.2 and neurons.lambda_identified() is False
    assert "lam=0.2 (not identified by the data)" in repr(neurons)
    grid = neurons.lambda_sensitivity()
    assert sorted(set(grid["lambda"])) == sorted(LAMBDA_GRID)
    assert set(grid["class"]) == {"selected", "specific", "related", "general", "dropped"}
    assert grid.query("chosen")["lambda"].unique().tolist() == [0.2]
    for lam, rows in grid.groupby("lambda"):
        fixed = tlm.identify(stats, top_rate=0.02, lam=lam)
        counts = dict(zip(rows["class"], rows["count"]))
        assert counts == {"selected": fixed.selected().count(), "specific": fixed.specific().count(),
                          "related": fixed.related().count(), "general": fixed.general().count(),
                          "dropped": fixed.dropped}
    # Saved and loaded, the sensitivity stays.
    loaded = tlm.LanguageNeurons.load(neurons.save(tmp_path / "neurons"))
    assert loaded.lambda_identified() is False
    assert loaded.lambda_sensitivity().equals(grid)


def test_no_neuron_active_in_every_language_leaves_lambda_unidentified():
    stats = two_language_stats({0: (6000, 0), 1: (0, 6000)}, quiet=0)
    with pytest.warns(UserWarning, match="the data do not identify lambda") as caught:
        neurons = tlm.identify(stats, top_rate=0.1)
    assert len(caught) == 1 and neurons.lambda_identified() is False


def test_lambda_search_ending_at_its_lower_bound_warns():
    # Neuron 3 has the lowest entropy at lambda 0; any positive lambda the search tries
    # prefers neuron 7, active in both languages.
    stats = two_language_stats({3: (5000, 4900), 7: (9900, 9900)})
    with pytest.warns(UserWarning, match=r"lower bound 0 of lam_range"):
        neurons = tlm.identify(stats, top_rate=0.05)
    assert neurons.lam == 0.0
    assert neurons.params["lam_search"]["at_bound"] == "lower"


def test_a_lambda_inside_the_range_and_a_fixed_lambda_do_not_warn(njunlp):
    stats, _ = njunlp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neurons = tlm.identify(stats, method="ternary")
        tlm.identify(stats, method="ternary", lam=0.2)
    assert neurons.params["lam_search"]["at_bound"] is None


def test_lape_warns_when_its_bar_leaves_selected_neurons_without_a_language():
    toy = tlm.models.planted()
    stats = tlm.collect_stats(tlm.adapt(toy.model), tlm.Corpus.from_dict(toy.texts), progress=False)
    with pytest.warns(UserWarning, match=r"16 of the 16 neurons LAPE selected .* in no language"):
        neurons = tlm.identify(stats, method="lape", top_rate=16 / 48)
    assert neurons.dropped == 16
    assert neurons.summary()["dropped"].tolist() == [16, 16]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assigned = tlm.identify(stats, method="lape", top_rate=16 / 48, bar_ratio=0.7)
    assert assigned.dropped == 0


def test_methods_dispatch_from_one_table_and_an_unknown_one_is_refused():
    assert set(importlib.import_module("tl_multilingual.neurons.identification").METHODS) == {"ternary", "lape"}
    stats = two_language_stats({0: (9000, 100), 1: (100, 9000)})
    with pytest.raises(tlm.IdentificationError, match="unknown method 'reference'"):
        tlm.identify(stats, method="reference")


@pytest.mark.parametrize(
    "kwargs",
    [dict(method="ternary"), dict(method="ternary", prefilter=True, filter_rate=0.9),
     dict(method="lape", top_rate=0.2, bar_ratio=0.9), dict(method="ternary", lam=0.05, bar_ratio=0.8)],
)
def test_the_recipe_repeats_the_identification(kwargs):
    gen = torch.Generator().manual_seed(11)
    stats = stats_from_probs((torch.rand(3, 40, 3, generator=gen) ** 3 * 100).long(), [100] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        neurons = tlm.identify(stats, **kwargs)
    recipe = neurons.recipe
    methods = importlib.import_module("tl_multilingual.neurons.identification").METHODS
    assert set(recipe) == {"method", *(p.name for p in methods[kwargs["method"]].parameters)}
    assert recipe.get("lam") == neurons.lam
    assert ("lam" in recipe) == methods[kwargs["method"]].has_lambda
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = tlm.identify(stats, **recipe)
    assert not [w for w in caught if "lambda search" in str(w.message)]  # the lambda is fixed: no search
    assert torch.equal(again.membership, neurons.membership) and again.lam == neurons.lam
    assert torch.equal(again.classes(), neurons.classes())


def test_each_method_declares_its_parameters_and_whether_it_has_a_lambda():
    ident = importlib.import_module("tl_multilingual.neurons.identification")
    ternary, lape = ident.METHODS["ternary"], ident.METHODS["lape"]
    assert ternary.has_lambda and not lape.has_lambda
    assert ternary.defaults() == {"top_rate": 0.01, "bar_ratio": 0.95, "lam": "auto",
                                  "lam_range": (0.0, 0.2), "tol": 1e-3, "prefilter": False,
                                  "filter_rate": 0.95}
    assert lape.defaults() == {"top_rate": 0.01, "bar_ratio": 0.95, "prefilter": True,
                               "filter_rate": 0.95}
    assert typing.get_args(ident.Method) == ("ternary", "lape")  # method=: from the table
    doc = ident.identify.__doc__
    for method in ident.METHODS.values():  # the documentation covers every declared parameter
        assert all(f"``{p.name}``" in doc for p in method.parameters), method.name


@pytest.mark.parametrize(
    "method, knobs, message",
    [("lape", {"lam": 0.1}, r"'lape' takes no parameter 'lam': it is a parameter of 'ternary'"),
     ("lape", {"lam_range": (0, 1)}, r"'lam_range': it is a parameter of 'ternary'"),
     ("ternary", {"top_ratio": 0.1}, r"'top_ratio': no identification method takes it"),
     ("ternary", {"top_rate": 0.0}, r"top_rate must be in \(0, 1\], got 0.0"),
     ("lape", {"bar_ratio": 1.5}, r"bar_ratio must be in \(0, 1\]"),
     ("ternary", {"lam": "search"}, r"lam must be a number or 'auto'"),
     ("ternary", {"lam_range": (0.2, 0.1)}, r"lam_range must be \(low, high\) with low < high")],
)
def test_a_knob_the_method_does_not_take_is_refused_naming_its_owner(method, knobs, message):
    stats = two_language_stats({0: (9000, 100), 1: (100, 9000)})
    with pytest.raises(tlm.IdentificationError, match=message):
        tlm.identify(stats, method=method, **knobs)


def test_a_new_method_is_one_table_entry(monkeypatch):
    """A toy method (the k neurons most active in some language) registered in the table
    is dispatched, validated, recorded and repeated by its recipe like the others."""
    ident = importlib.import_module("tl_multilingual.neurons.identification")

    def most_active(probs, *, k):
        flat = probs.amax(-1).flatten()
        chosen = flat.argsort(descending=True, stable=True)[:k].sort().values
        bar = ident.activation_bar(probs, 0.5)
        return ident.Identified(ident.Selection(chosen, probs > bar, bar), None, {})

    toy = ident.IdentificationMethod("most_active", most_active,
                                     (ident.Parameter("k", 3, "neurons selected"),),
                                     has_lambda=False, reference="a test")
    monkeypatch.setitem(ident.METHODS, "most_active", toy)
    counts = torch.tensor([[[900, 10], [10, 800], [500, 500], [0, 0]]])
    stats = stats_from_probs(counts, [1000, 1000])
    neurons = tlm.identify(stats, method="most_active", k=2)
    probs = stats.probabilities().amax(-1).flatten()
    top = sorted(probs.argsort(descending=True)[:2].tolist())
    assert neurons.selected().indices()[:, 1].tolist() == top
    assert neurons.recipe == {"method": "most_active", "k": 2}
    assert torch.equal(tlm.identify(stats, **neurons.recipe).membership, neurons.membership)
    with pytest.raises(tlm.IdentificationError, match="'most_active' takes no parameter"):
        tlm.identify(stats, method="most_active", top_rate=0.5)


def ternary_by_hand(probs, lam, top_rate, bar_ratio):
    """Zhang et al.'s (AAAI-26) selection written out in numpy: the selected flat indices
    and the number of languages each neuron is above the bar in."""
    import numpy as np

    p = probs.numpy().astype(float)
    k_langs = p.shape[-1]
    total = p.sum(-1, keepdims=True)
    normed = np.where(total > 0, p / np.where(total > 0, total, 1), 1.0 / k_langs)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(normed > 0, normed * np.log(normed), 0.0).sum(-1) / np.log(k_langs)
    norm = sum(1 / i for i in range(1, k_langs + 1)) / k_langs
    score = (ent - lam * p.max(-1) / norm).reshape(-1)
    chosen = np.sort(np.argsort(score, kind="stable")[: round(top_rate * score.size)])
    bar = np.sort(p.reshape(-1))[round(bar_ratio * p.size) - 1]
    return chosen, (p > bar).sum(-1).reshape(-1)


def test_the_automatic_lambda_is_the_largest_that_keeps_selected_neurons_out_of_some_language():
    import numpy as np

    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.1, 0.02]).repeat(2, 100, 1)
    probs[:, :10] = torch.tensor([0.95, 0.95, 0.5])  # nearly general
    probs[:, 10:15] = torch.tensor([0.6, 0.01, 0.01])  # specific
    probs[:, 15:18] = torch.tensor([0.6, 0.5, 0.01])  # related
    probs = (probs + 0.01 * torch.rand(probs.shape, generator=generator)).clamp(0, 1)
    stats = tlm.ActivationStats.from_counts(
        ["en", "zh", "de"], [1000] * 3, (probs * 1000).round().long()
    )
    neurons = tlm.identify(stats, top_rate=0.1, bar_ratio=0.85)
    lam = neurons.lam
    assert 0 < lam < 0.2 and neurons.params["lam_search"]["at_bound"] is None
    p = stats.probabilities()

    def in_all(value):
        chosen, n_above = ternary_by_hand(p, value, 0.1, 0.85)
        return int((n_above[chosen] == 3).sum())

    assert in_all(lam) == 0 and in_all(lam + 1e-3) > 0  # the largest such lambda, to the tolerance
    chosen, n_above = ternary_by_hand(p, lam, 0.1, 0.85)
    selected = neurons.selected().tensor.reshape(-1).nonzero().squeeze(1).numpy()
    assert np.array_equal(selected, chosen)
    assert neurons.histogram == np.bincount(n_above[chosen], minlength=4).tolist()
    assert neurons.dropped == int((n_above[chosen] == 0).sum()) > 0
    assert neurons.specific().count() == int((n_above[chosen] == 1).sum())
    assert neurons.related().count() == int((n_above[chosen] == 2).sum())
    assert neurons.general().count() == int(
        (n_above == 3).sum()
    )  # over every neuron, selected or not
    assert neurons.summary()["dropped"].tolist() == [neurons.dropped] * 3
