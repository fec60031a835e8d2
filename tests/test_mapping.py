"""The four-stage layer map (map_stages): planted profiles with known answers, each
signal's own map, fit quality against a null, signatures as checks, and explicit stage
maps in experiments."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tiny
import torch
from test_segmentation import plain_segment  # the brute-force search, written once

import tl_multilingual as tlm
from tl_multilingual import resample
from tl_multilingual.stages.features import lens_features, neuron_features
from tl_multilingual.stages.lens import LensResult
from tl_multilingual.stages.signatures import StageWarning

LANGUAGE = [12] * 4 + [1] * 6 + [12] * 4 + [6] * 2  # stages 0-3, 4-9, 10-13, 14-15
GENERAL = [2] * 4 + [4] * 6 + [2] * 4 + [20] * 2


def planted_stats(language, general, d_mlp=200, langs=("en", "fr", "zh"), tokens=10_000, seed=0):
    """Statistics whose ternary identification gives ``language[l]`` language-specific
    and ``general[l]`` general neurons in layer ``l``; and the matching top rate."""
    rng = np.random.default_rng(seed)
    n_layers, k = len(language), len(langs)
    p = np.zeros((n_layers, d_mlp, k))
    for layer in range(n_layers):
        order = rng.permutation(d_mlp)
        for i, j in enumerate(order[: language[layer]]):
            p[layer, j, i % k] = 0.9
        p[layer, order[language[layer] : language[layer] + general[layer]], :] = 0.5
    stats = tlm.ActivationStats.from_counts(langs, [tokens] * k, torch.tensor(rng.binomial(tokens, p)))
    return stats, sum(language) / (n_layers * d_mlp)


def planted_neurons(language, general, **kwargs):
    stats, rate = planted_stats(language, general, **kwargs)
    return stats, tlm.identify(stats, top_rate=rate)


def staged_lens(boundaries, n_layers=16, n_prompts=20, seed=0) -> LensResult:
    """A lens with four levels: target answer improbable, then English, then the
    target rising, then the target on top (Wendler et al.'s picture)."""
    edges = (0, *boundaries, n_layers)
    target_levels, english_levels, entropy_levels = (0.001, 0.01, 0.3, 0.8), (0.01, 0.3, 0.05, 0.01), (6, 4, 2, 1)
    target, english, entropy = (np.empty(n_layers) for _ in range(3))
    for k in range(4):
        target[edges[k] : edges[k + 1]] = target_levels[k]
        english[edges[k] : edges[k + 1]] = english_levels[k]
        entropy[edges[k] : edges[k + 1]] = entropy_levels[k]
    gen = torch.Generator().manual_seed(seed)
    noise = lambda scale: scale * torch.rand(n_prompts, n_layers, generator=gen)  # noqa: E731
    probability = torch.stack([torch.tensor(target).expand(n_prompts, -1) + noise(0.01),
                               torch.tensor(english).expand(n_prompts, -1) + noise(0.01)], -1).float()
    return LensResult(("zh", "en"), probability, torch.ones_like(probability),
                      torch.tensor(entropy).float().expand(n_prompts, -1) + noise(0.1),
                      torch.zeros(n_prompts, n_layers, dtype=torch.long), tuple([None] * n_prompts))


def quiet_map(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage_map = tlm.map_stages(*args, **kwargs)
    return stage_map, [str(w.message) for w in caught if issubclass(w.category, StageWarning)]


# -- planted profiles -----------------------------------------------------------------


def test_a_clean_four_stage_profile_gives_its_boundaries_without_warnings():
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    stage_map, raised = quiet_map(neurons, stats=stats, n_boot=5)
    assert stage_map.boundaries == (4, 10, 14)
    assert stage_map.warnings == () and raised == []
    assert stage_map.verdict.level == "supported" and stage_map.verdict.reasons == ()
    assert stage_map.choice == "constrained" and stage_map.constrained_map() is stage_map
    assert repr(stage_map).endswith("vocabulary_output=14-15, supported)")
    assert stage_map.describe().endswith("(supported)")
    assert (stage_map.summary()["verdict"] == "supported").all()
    fit = stage_map.by_signal["neurons"]
    assert fit.unconstrained == fit.boundaries and fit.constrained
    assert all(check.holds and check.met for check in fit.checks)
    quality = stage_map.quality
    assert quality.significant() and quality.explained > 0.95
    assert quality.beats[3] < 0.05 and quality.beats[2] < 0.05
    assert quality.explained_by_stages[3] < quality.explained_by_stages[4]
    assert set(stage_map.stability) == {"understanding|shared_reasoning", "shared_reasoning|output_transformation",
                                        "output_transformation|vocabulary_output"}


EARLY_GENERAL = [5, 8, 15, 150, 100, 70, 50, 40, 30, 20, 15, 10, 8, 5, 5, 5]


def test_general_neurons_that_peak_early_are_a_failed_signature_not_a_silent_force():
    # The picture of a small real model: general neurons peak at layer 3 and vanish late.
    stats, neurons = planted_neurons(LANGUAGE, EARLY_GENERAL, d_mlp=600)
    with pytest.warns(StageWarning, match="vocabulary output has the most general neurons"):
        stage_map = tlm.map_stages(neurons, stats=stats, n_boot=5)
    text = " ".join(stage_map.warnings)
    assert "general neurons peak at layer 3" in text
    fit = stage_map.by_signal["neurons"]
    failed = [c for c in fit.checks if not c.holds]
    assert "most_general_neurons_in_vocabulary_output" in {c.name for c in failed}
    # The signatures would force a degenerate map; the default is the best-supported one.
    assert fit.imposed == (1, 2, 3)
    assert stage_map.boundaries == fit.unconstrained != (1, 2, 3)
    assert stage_map.choice == "unconstrained" and not stage_map.constrained
    assert stage_map.quality.significant()
    assert stage_map.verdict.level == "weak"
    assert any("signatures that do not hold" in r for r in stage_map.verdict.reasons)
    assert "which the data reject" in text and "StageMap.constrained_map()" in text
    assert "only because the signatures force it" not in text  # the default forces nothing
    # The constrained map stays reachable, with its own verdict saying why it is rejected.
    forced = stage_map.constrained_map()
    assert forced.boundaries == (1, 2, 3) and forced.choice == "constrained"
    assert forced.verdict.level == "not supported"
    reasons = " ".join(forced.verdict.reasons)
    assert "only the signatures force" in reasons and "no better than layer-shuffled features" in reasons
    assert "less than the best three stages" in reasons
    assert not forced.quality.significant()
    assert forced.quality.explained < forced.quality.explained_unconstrained
    assert "not supported" in repr(forced) and "not supported" in forced.describe()
    with pytest.raises(tlm.TLMultilingualError, match="allow_unsupported=True"):
        forced.mask("shared_reasoning")
    assert forced.mask("shared_reasoning", allow_unsupported=True).count() == 600
    assert stage_map.mask("shared_reasoning").count() == 600 * len(stage_map.layers("shared_reasoning"))
    assert stage_map.constrained_map().unconstrained().boundaries == stage_map.boundaries


def test_imposing_the_signatures_by_name_gives_the_forced_map_and_says_so():
    stats, neurons = planted_neurons(LANGUAGE, EARLY_GENERAL, d_mlp=600)
    stage_map, raised = quiet_map(neurons, stats=stats, n_boot=5, signatures=True)
    assert stage_map.boundaries == (1, 2, 3) and stage_map.choice == "constrained"
    assert stage_map.verdict.level == "not supported"
    text = " ".join(raised)
    assert "only because the signatures force it" in text and "not that the data support it" in text
    assert any(v == 1.0 for v in stage_map.stability.values())  # perfectly stable, yet forced
    assert "StageMap.unconstrained()" in text and "which the data reject" not in text
    assert stage_map.unconstrained().verdict.level == "weak"


def test_the_signatures_can_be_checked_without_being_imposed():
    stats, neurons = planted_neurons(LANGUAGE, EARLY_GENERAL, d_mlp=600)
    stage_map, raised = quiet_map(neurons, signatures=False, n_boot=0)
    fit = stage_map.by_signal["neurons"]
    assert stage_map.boundaries == fit.unconstrained and not stage_map.constrained
    assert any("does not hold in the data" in w for w in raised)
    # A segmentation meeting the signatures exists: the warning says they were not
    # imposed, never that none exists.
    assert fit.imposed == (1, 2, 3)
    assert any("the signatures were not imposed (signatures=False)" in w for w in raised)
    assert not any("no four-stage segmentation meets" in w for w in raised)


def test_a_flat_random_profile_is_not_significant_and_is_warned():
    rng = np.random.default_rng(1)
    stats, neurons = planted_neurons(list(rng.integers(4, 8, 16)), list(rng.integers(3, 6, 16)))
    stage_map, raised = quiet_map(neurons, stats=stats, n_boot=5)
    assert not stage_map.quality.significant()
    assert any("do not show four stages" in w for w in stage_map.warnings)
    assert raised == list(stage_map.warnings)


# -- two signals ------------------------------------------------------------------------


def test_neuron_and_lens_maps_that_agree():
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    stage_map, _ = quiet_map(neurons, staged_lens((4, 10, 14)), stats=stats, n_boot=5)
    assert set(stage_map.by_signal) == {"neurons", "lens", "neurons+lens"}
    assert stage_map.by_signal["neurons"].boundaries == stage_map.by_signal["lens"].boundaries == (4, 10, 14)
    assert stage_map.boundaries == (4, 10, 14)
    assert stage_map.agreement["agree"].all() and (stage_map.agreement["difference"] == 0).all()
    assert not any("disagree" in w for w in stage_map.warnings)
    assert {"stage_neurons", "stage_lens", "stage_agreement", "boundary_share"} <= set(stage_map.to_frame().columns)


def test_neuron_and_lens_maps_that_disagree_say_where():
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    stage_map, raised = quiet_map(neurons, staged_lens((7, 12, 14)), stats=stats, n_boot=5)
    assert stage_map.by_signal["neurons"].boundaries == (4, 10, 14)
    assert stage_map.by_signal["lens"].boundaries == (7, 12, 14)
    assert stage_map.agreement["difference"].tolist() == [3, 2, 0]
    assert stage_map.agreement["agree"].tolist() == [False, True, True]  # within two layers
    disagreements = [w for w in raised if "disagree" in w]
    assert len(disagreements) == 1 and "shared reasoning begins: layer 4 by the neurons, layer 7 by the lens" \
        in disagreements[0]


@pytest.mark.parametrize("step", [3, 6, 9])
def test_a_planted_decodability_step_gives_a_boundary_there(step):
    stage_map, _ = quiet_map(lens=planted_lens(step), n_boot=20)
    assert step in stage_map.boundaries
    assert stage_map.signals == ("lens",)
    # Refits on resampled prompts always put a boundary at the step.
    assert stage_map.evidence.loc[step, "boundary_share"] > 0.95
    assert stage_map.evidence["boundary_share"].drop(index=step).max() < 0.95


def planted_lens(step: int, n_layers: int = 12, n_prompts: int = 20, seed: int = 0) -> LensResult:
    """Prompts whose target answer is decodable only from layer ``step`` on."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.where(torch.arange(n_layers) >= step, 0.8, 0.001).expand(n_prompts, n_layers)
    target = (target + 0.02 * torch.rand(n_prompts, n_layers, generator=gen)).clamp(0, 1)
    english = torch.full((n_prompts, n_layers), 0.01) + 0.005 * torch.rand(n_prompts, n_layers, generator=gen)
    entropy = 5.0 - 4.0 * target + 0.1 * torch.rand(n_prompts, n_layers, generator=gen)
    probability = torch.stack([target, english], -1)
    return LensResult(("zh", "en"), probability, torch.ones_like(probability), entropy,
                      torch.zeros(n_prompts, n_layers, dtype=torch.long), tuple([None] * n_prompts))


def test_a_saved_map_keeps_each_signal_the_agreement_and_the_warnings(tmp_path):
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    stage_map, _ = quiet_map(neurons, staged_lens((7, 12, 14)), stats=stats, n_boot=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loading never raises the warnings again
        loaded = tlm.StageMap.load(stage_map.save(tmp_path / "stages.json"))
    assert loaded.boundaries == stage_map.boundaries and loaded.warnings == stage_map.warnings
    assert loaded.by_signal["lens"].quality == stage_map.by_signal["lens"].quality
    assert loaded.by_signal["neurons"].checks == stage_map.by_signal["neurons"].checks
    assert loaded.agreement.equals(stage_map.agreement)
    assert loaded.stability == stage_map.stability
    with pytest.warns(DeprecationWarning, match="stability"):
        assert loaded.confidence == loaded.stability


# -- Zhang et al.'s (AAAI-26) statistics ---------------------------------------------------------------


@pytest.fixture(scope="module")
def paper_a(njunlp_stats):
    return njunlp_stats, tlm.identify(njunlp_stats, method="ternary")


def test_class_profiles_of_paper_a_give_its_stages(paper_a):
    stats, neurons = paper_a
    stage_map, raised = quiet_map(neurons, stats=stats, n_boot=10)
    assert stage_map.signals == ("neurons",) and stage_map.constrained
    # Zhang et al.'s map is the default, supported, without a caution.
    assert stage_map.boundaries == (5, 18, 31) and stage_map.choice == "constrained"
    assert stage_map.verdict.level == "supported", stage_map.verdict
    assert stage_map.warnings == () and raised == []
    assert stage_map.layers("understanding").stop - 1 in (3, 4, 5)
    assert stage_map.layers("shared_reasoning").stop - 1 in (16, 17, 18, 19)
    assert stage_map.layers("vocabulary_output") in (range(31, 32), range(30, 32))
    assert set(stage_map.stability) == {"understanding|shared_reasoning", "shared_reasoning|output_transformation",
                                        "output_transformation|vocabulary_output"}
    assert all(0.0 <= c <= 1.0 for c in stage_map.stability.values())
    frame = stage_map.to_frame()
    assert list(frame["stage"].unique()) == list(tlm.STAGES)
    assert {"language_neurons", "general_neurons", "stage_agreement"} <= set(frame.columns)
    assert stage_map.quality.significant()


# -- explicit stage maps in experiments -------------------------------------------------


def test_experiments_take_a_stage_map_explicitly():
    model = tiny.bridge("llama", n_layers=6)
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    stats = tlm.collect_stats(lm, corpus, progress=False)
    neurons = tlm.identify(stats, top_rate=0.1)
    words = [{"en": w, "fr": f} for w, f in (("cat", "chat"), ("mat", "tapis"), ("morning", "matin"), ("market", "marché"))]
    lens = tlm.language_lens(lm, tlm.prompts.translation(words, src="en", tgt="fr", shots=1))
    stages, _ = quiet_map(neurons, lens, stats=stats, n_boot=5)
    assert stages.signals == ("neurons", "lens")
    assert not hasattr(tlm.adapt(model), "stages")  # nothing is attached to the model
    spans = [stages.layers(s) for s in tlm.STAGES]
    assert [layer for span in spans for layer in span] == list(range(6))
    first = stages.layers("understanding")
    # A tiny random model's map is no better than chance: masks of it need the override.
    assert stages.verdict.level == "not supported"
    with pytest.raises(tlm.TLMultilingualError, match="allow_unsupported=True"):
        stages.mask("understanding")
    mask = stages.mask("understanding", allow_unsupported=True)
    assert mask.per_layer().tolist() == [lm.d_mlp if l in first else 0 for l in range(6)]
    specific = neurons.specific()
    with tlm.ablate(lm, specific, layers=first) as edits:
        (edit,) = edits.edits
        assert edit.mask == specific.restrict(first)
    middle = stages.layers("shared_reasoning")
    table = tlm.deactivation_matrix(lm, neurons, corpus, layers=middle, controls=0, n_boot=10, progress=False)
    for lang in corpus.languages:
        expected = neurons.specific(lang).restrict(middle).count()
        assert table.to_frame().query("ablated == @lang")["n_neurons"].iloc[0] == expected
    with pytest.raises(tlm.TLMultilingualError, match="unknown stage"):
        stages.layers("thinking")


@pytest.mark.parametrize("call", ["ablate", "deactivation_matrix", "patch_neurons"])
def test_a_stage_name_without_its_map_is_a_clear_error(call):
    model = tiny.bridge("llama", n_layers=4)
    lm = tlm.adapt(model)
    mask = tlm.NeuronMask.full(lm.n_layers, lm.d_mlp)
    with pytest.raises(tlm.TLMultilingualError, match=r"stage_map\.layers\('understanding'\)"):
        if call == "ablate":
            tlm.ablate(lm, mask, layers="understanding")
        elif call == "deactivation_matrix":
            stats = tlm.collect_stats(lm, tlm.Corpus.from_dict(tiny.SAMPLE_TEXT), progress=False)
            tlm.deactivation_matrix(lm, tlm.identify(stats, top_rate=0.1), tlm.Corpus.from_dict(tiny.SAMPLE_TEXT),
                                layers="understanding", controls=0, progress=False)
        else:
            tlm.patch_neurons(lm, source=["a b"], target=["c d"], mask=mask, layers="understanding", controls=0)


def test_the_old_call_with_a_model_first_warns_and_attaches_nothing():
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    model = tiny.bridge("llama", n_layers=4)
    with pytest.warns(DeprecationWarning, match="no longer attaches"):
        stage_map = tlm.map_stages(model, neurons, n_boot=0, n_null=0)
    assert stage_map.boundaries == (4, 10, 14)
    assert not hasattr(tlm.adapt(model), "stages")


def test_a_hand_made_map_checks_its_boundaries():
    stage_map = tlm.StageMap.from_boundaries(8, (2, 5, 7), d_mlp=4)
    assert stage_map.layers("output_transformation") == range(5, 7) and stage_map.warnings == ()
    with pytest.raises(tlm.TLMultilingualError, match="boundaries"):
        tlm.StageMap.from_boundaries(8, (2, 2, 7))


# -- fit quality, stability and features, recomputed here --------------------------------


def standardised(frame):
    x = frame[[c for c in frame.columns if c.startswith("f_")]].to_numpy(float)
    scale = x.std(0)
    return (x - x.mean(0)) / np.where(scale > 0, scale, 1.0)


def split_cost(x, bounds):
    edges = (0, *bounds, len(x))
    return sum(
        float(((x[lo:hi] - x[lo:hi].mean(0)) ** 2).sum()) for lo, hi in zip(edges[:-1], edges[1:])
    )


def best_cost(x, k):
    """The smallest squared error of any split of ``x`` into ``k`` contiguous segments."""
    import itertools

    return min(split_cost(x, bounds) for bounds in itertools.combinations(range(1, len(x)), k - 1))


def wobbly_lens(n_layers=10, n_prompts=12, seed=3):
    """Prompts whose target answer rises over a few layers, each prompt at its own pace:
    refits on resampled prompts move the boundaries by a layer or so."""
    rng = np.random.default_rng(seed)
    layers = np.arange(n_layers)
    start = rng.uniform(3.0, 6.0, size=(n_prompts, 1))
    target = 0.9 / (1 + np.exp(-(layers - start) * 1.5)) + 0.05 * rng.random((n_prompts, n_layers))
    english = 0.3 * np.exp(-((layers - 3) ** 2) / 4) + 0.05 * rng.random((n_prompts, n_layers))
    entropy = 5.0 - 3.0 * target + 0.3 * rng.random((n_prompts, n_layers))
    probability = torch.tensor(np.stack([target, english], -1)).float()
    return LensResult(
        ("zh", "en"),
        probability,
        torch.ones_like(probability),
        torch.tensor(entropy).float(),
        torch.zeros(n_prompts, n_layers, dtype=torch.long),
        tuple([None] * n_prompts),
    )


def test_explained_shares_are_those_of_a_plain_search():
    lens = wobbly_lens()
    stage_map, _ = quiet_map(lens=lens, n_boot=0, n_null=0)
    x = standardised(lens_features(lens))
    total = float((x**2).sum())
    q = stage_map.quality
    assert q.explained == pytest.approx(1 - split_cost(x, stage_map.boundaries) / total)
    assert q.explained_unconstrained == pytest.approx(1 - best_cost(x, 4) / total)
    for k in (2, 3, 4):
        assert q.explained_by_stages[k] == pytest.approx(1 - best_cost(x, k) / total)
    assert q.n_null == 0 and np.isnan(q.p_value)


def test_p_values_count_the_null_fits_at_least_as_good_plus_one():
    """The p-value is (1 + #null >= observed) / (1 + n_null): never 0. Recomputed from
    layer shuffles drawn as the documented null, with a plain search per shuffle."""
    lens = wobbly_lens()
    n_null, seed = 40, 5
    stage_map, _ = quiet_map(lens=lens, n_boot=0, n_null=n_null, seed=seed)
    q = stage_map.quality
    x = standardised(lens_features(lens))
    n, total = len(x), float((x**2).sum())
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.tile(np.arange(n), (n_null, 1)), axis=1)
    null = np.array([1 - best_cost(x[row], 4) / total for row in order])
    assert q.p_value == pytest.approx((1 + np.sum(null >= q.explained - 1e-12)) / (1 + n_null))
    assert q.p_value >= 1 / (1 + n_null)  # a fit better than every shuffle still gets p > 0
    for k in (3, 2):
        import itertools

        bounds = min(itertools.combinations(range(1, n), k - 1), key=lambda b: split_cost(x, b))
        fitted = np.empty_like(x)
        edges = (0, *bounds, n)
        for lo, hi in zip(edges[:-1], edges[1:]):
            fitted[lo:hi] = x[lo:hi].mean(0)
        observed = 1 - best_cost(x, 4) / best_cost(x, k)
        order = rng.permuted(np.tile(np.arange(n), (n_null, 1)), axis=1)
        gains = np.array(
            [
                1
                - best_cost(fitted + (x - fitted)[row], 4)
                / best_cost(fitted + (x - fitted)[row], k)
                for row in order
            ]
        )
        assert q.beats[k] == pytest.approx((1 + np.sum(gains >= observed - 1e-12)) / (1 + n_null))


def test_a_clear_four_stage_profile_gets_the_smallest_p_value_not_zero():
    stage_map, _ = quiet_map(lens=staged_lens((4, 10, 14)), n_boot=0, n_null=30)
    assert stage_map.quality.p_value == 1 / 31
    assert stage_map.quality.significant(alpha=0.05) and not stage_map.quality.significant(
        alpha=1 / 31
    )


@pytest.mark.parametrize("lens_seed", [3, 5])  # 5: the refits' 5% and 10% quantiles differ
def test_stability_and_intervals_are_counted_from_refits_on_resampled_prompts(lens_seed):
    lens = wobbly_lens(seed=lens_seed)
    n_boot, seed = 30, 2
    stage_map, _ = quiet_map(lens=lens, n_boot=n_boot, n_null=0, seed=seed)
    draws = resample.draws(lens.probability.shape[0], n_boot, seed)
    refits = []
    for row in draws:
        x = standardised(lens_features(lens.select(row)))
        refits.append(plain_segment(x, [(0, "max_last")]) or plain_segment(x, []))
    refits = np.array(refits)
    boundaries = stage_map.boundaries
    n_layers = lens.n_layers
    for k, name in enumerate(
        (
            "understanding|shared_reasoning",
            "shared_reasoning|output_transformation",
            "output_transformation|vocabulary_output",
        )
    ):
        exact = float((refits[:, k] == boundaries[k]).mean())
        assert stage_map.stability[name] == pytest.approx(exact)
        low, high = np.quantile(refits[:, k], [0.05, 0.95])
        assert stage_map.intervals[name] == (int(np.floor(low)), int(np.ceil(high)))
        # A refit one layer off is not the same boundary.
        assert (
            stage_map.stability[name]
            <= stage_map.evidence.loc[boundaries[k], "boundary_share"] + 1e-12
        )
    assert any(stage_map.stability[name] < 1 for name in stage_map.stability)  # refits did move
    share = np.bincount(refits.reshape(-1), minlength=n_layers)[:n_layers] / n_boot
    assert np.allclose(stage_map.evidence["boundary_share"], share)
    stage_of = [tlm.StageMap.from_boundaries(n_layers, b).stage_of for b in refits]
    agreement = [
        np.mean([f(layer) == stage_map.stage_of(layer) for f in stage_of])
        for layer in range(n_layers)
    ]
    assert np.allclose(stage_map.evidence["stage_agreement"], agreement)


def neurons_with(language_per_layer, general_per_layer, d_mlp=64, langs=("en", "fr")):
    """Identified neurons with these many language-specific and general neurons per layer."""
    n_layers = len(language_per_layer)
    membership = torch.zeros(n_layers, d_mlp, len(langs), dtype=torch.bool)
    general = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    for layer, (n_lang, n_gen) in enumerate(zip(language_per_layer, general_per_layer)):
        for j in range(n_lang):
            membership[layer, j, j % len(langs)] = True
        general[layer, d_mlp - n_gen :] = True
    return tlm.LanguageNeurons(langs, membership, membership.any(-1), general, method="reference")


def test_the_shared_reasoning_signature_compares_it_with_both_neighbours():
    """Language neurons fall stage by stage (20, 10, 2, then 30): shared reasoning has
    fewer than understanding but more than output transformation, so "fewest of the
    first three stages" does not hold."""
    language = [20, 21, 20, 10, 11, 10, 2, 3, 2, 30, 31, 30]
    neurons = neurons_with(language, [5] * 12)
    stage_map, _ = quiet_map(neurons, signatures=False, n_boot=0, n_null=0)
    fit = stage_map.by_signal["neurons"]
    assert fit.unconstrained == (3, 6, 9)
    check = {c.name: c for c in fit.checks}["fewest_language_neurons_in_shared_reasoning"]
    values = np.log1p(np.array(language, float))
    means = [values[lo:hi].mean() for lo, hi in ((0, 3), (3, 6), (6, 9), (9, 12))]
    assert means[1] < means[0] and means[1] > means[2]
    assert not check.holds and not check.met
    assert "fewest in output transformation (layers 6-8)" in check.detail
    imposed, _ = quiet_map(neurons, signatures=True, n_boot=0, n_null=0)
    b1, b2, b3 = imposed.boundaries
    m = [values[lo:hi].mean() for lo, hi in ((0, b1), (b1, b2), (b2, b3), (b3, 12))]
    assert m[1] <= m[0] and m[1] <= m[2]  # the imposed map meets both comparisons
    assert {c.name: c for c in imposed.by_signal["neurons"].checks}[check.name].met


def test_neuron_features_count_language_and_general_neurons_per_layer():
    neurons = neurons_with([3, 0, 7, 1], [2, 9, 0, 4], d_mlp=20)
    features = neuron_features(neurons)
    assert features["language_neurons"].tolist() == [3, 0, 7, 1]
    assert features["general_neurons"].tolist() == [2, 9, 0, 4]
    assert np.allclose(features["f_language"], np.log1p([3, 0, 7, 1]))
    assert np.allclose(features["f_general"], np.array([2, 9, 0, 4]) / 20)


def test_lens_features_average_each_prompt_at_its_own_target():
    langs = ("zh", "fr", "en")
    prompts = (
        tlm.LensPrompt("a", {"zh": "x"}),
        tlm.LensPrompt("b", {"fr": "y", "en": "z"}),
        tlm.LensPrompt("c", {"en": "w"}),
        tlm.LensPrompt("d", {"fr": "v"}),
    )
    rng = np.random.default_rng(0)
    probability = torch.tensor(rng.random((4, 5, 3))).float()
    probability[0, :, 1] = float("nan")  # no French answer for the first prompt
    entropy = torch.tensor(rng.random((4, 5))).float()
    lens = LensResult(
        langs,
        probability,
        torch.ones_like(probability),
        entropy,
        torch.zeros(4, 5, dtype=torch.long),
        prompts,
    )
    p = probability.numpy()
    features = lens_features(lens)
    targets = [0, 1, 2, 1]  # each prompt's first answer language
    assert np.allclose(
        features["f_target"], np.nanmean([p[i, :, t] for i, t in enumerate(targets)], 0)
    )
    # English is averaged over the prompts whose target is not English (prompt 2's is).
    assert np.allclose(features["f_english"], np.nanmean(p[[0, 1, 3], :, 2], 0))
    assert np.allclose(features["f_entropy"], entropy.numpy().mean(0))
    fixed = lens_features(lens, target="fr")
    assert np.allclose(fixed["f_target"], np.nanmean(p[:, :, 1], 0))
    assert np.allclose(fixed["f_english"], np.nanmean(p[:, :, 2], 0))
    assert "f_english" not in lens_features(lens, target="en")


# -- every caution: a case that says it and one that must not ------------------------------


def _warned(case):
    """The cautions of the map of a named profile (cached: several sentences share one)."""
    if case not in _CASES:
        language, general, kwargs, lens = {
            "clean": (LANGUAGE, GENERAL, {}, None),
            "clean_free": (LANGUAGE, GENERAL, {"signatures": False}, None),
            "early": (LANGUAGE, EARLY_GENERAL, {}, None),
            "early_imposed": (LANGUAGE, EARLY_GENERAL, {"signatures": True}, None),
            "early_free": (LANGUAGE, EARLY_GENERAL, {"signatures": False}, None),
            "falling": (LANGUAGE, list(range(40, 8, -2)), {}, None),
            "four_layers": ([12, 1, 12, 6], [2, 4, 2, 20], {}, None),
            "three_stages": ([12] * 5 + [1] * 6 + [12] * 5, [3] * 16, {}, None),
            "agree": (LANGUAGE, GENERAL, {}, (4, 10, 14)),
            "disagree": (LANGUAGE, GENERAL, {}, (8, 12, 14)),
        }[case]
        d_mlp = 600 if general is EARLY_GENERAL else 200
        stats, neurons = planted_neurons(language, general, d_mlp=d_mlp)
        lens_result = staged_lens(lens) if lens is not None else None
        _CASES[case] = quiet_map(neurons, lens_result, n_boot=0, n_null=200, **kwargs)
    return _CASES[case]


_CASES: dict = {}

SENTENCES = [
    # (words of the sentence, a profile that must raise it, one that must not)
    ("does not hold in the data", "early", "clean"),
    ("gives understanding 0, shared reasoning 1, output transformation 2, vocabulary output 3-15; the best fit "
     "without them is", "early_imposed", "early"),
    ("which the data reject", "early", "early_imposed"),
    ("no four-stage segmentation meets", "falling", "early"),
    ("the signatures were not imposed (signatures=False)", "early_free", "clean_free"),
    ("only because the signatures force it", "early_imposed", "early"),
    ("with four layers every stage is one layer", "four_layers", "clean"),
    ("the data do not show four stages", "four_layers_never", "clean"),
    ("four stages fit the layers no better than 3 stages", "three_stages", "clean"),
    ("disagree on where", "disagree", "agree"),
    ("signatures that do not hold in the data:", "early_with_lens", "agree"),
]


@pytest.mark.parametrize("words, raises, silent", [s for s in SENTENCES if "never" not in s[1]
                                                   and "with_lens" not in s[1]])
def test_each_caution_is_said_when_true_and_only_then(words, raises, silent):
    stage_map, raised = _warned(raises)
    assert any(words in w for w in raised), (words, raised)
    assert raised == list(stage_map.warnings)
    quiet, raised_quiet = _warned(silent)
    assert not any(words in w for w in raised_quiet), (words, raised_quiet)


def test_the_fit_no_better_than_chance_and_the_combined_signatures_are_said_only_when_true():
    rng = np.random.default_rng(1)
    stats, neurons = planted_neurons(list(rng.integers(4, 8, 16)), list(rng.integers(3, 6, 16)))
    flat, raised = quiet_map(neurons, n_boot=0, n_null=200)
    assert any("the data do not show four stages" in w for w in raised)
    assert flat.verdict.level == "not supported"
    assert not any("do not show four stages" in w for w in _warned("clean")[1])
    stats, neurons = planted_neurons(LANGUAGE, EARLY_GENERAL, d_mlp=600)
    both, raised = quiet_map(neurons, staged_lens((4, 10, 14)), n_boot=0, n_null=200)
    assert any(w.startswith("Combined map: Zhang et al.'s (AAAI-26) signatures that do not hold") for w in raised)
    assert not any(w.startswith("Combined map: Zhang et al.'s") for w in _warned("agree")[1])


def test_the_verdicts_of_the_profiles():
    assert _warned("clean")[0].verdict.level == "supported"
    three = _warned("three_stages")[0]
    assert three.verdict.level == "weak" and any("no better than three" in r for r in three.verdict.reasons)
    disagree = _warned("disagree")[0]
    assert disagree.verdict.level == "weak"
    assert "signals disagree by 4 layers" in disagree.verdict.reasons
    assert _warned("four_layers")[0].verdict.level == "not supported"
    falling = _warned("falling")[0]
    assert falling.by_signal["neurons"].imposed is None and falling.choice == "unconstrained"
    with pytest.raises(tlm.TLMultilingualError, match="no four-stage segmentation"):
        falling.constrained_map()


# -- a third signal: cross-lingual representation similarity ----------------------------


def planted_similarity(boundaries, n_layers=16, n_items=20, levels=(0.05, 0.6, 0.2, 0.05), seed=0):
    """Per-layer similarity of translations (minus its null) at four levels, with noise
    per item: highest in shared reasoning when ``levels`` says so."""
    from tl_multilingual.stages.similarity import SimilarityResult

    rng = np.random.default_rng(seed)
    edges = (0, *boundaries, n_layers)
    curve = np.concatenate([[levels[k]] * (edges[k + 1] - edges[k]) for k in range(4)])
    pairs = (("en", "fr"), ("en", "zh"), ("fr", "zh"))
    null = 0.01 * rng.standard_normal((3, n_items, len(pairs), n_layers))
    values = null + curve + 0.02 * rng.standard_normal((3, n_items, len(pairs), n_layers))
    values[2] = np.clip(values[2], 0, 1)  # retrieval is a share
    shuffles = torch.tensor([list(range(1, n_items)) + [0]])
    return SimilarityResult(("en", "fr", "zh"), pairs, torch.tensor(values), torch.tensor(null), shuffles, "mean")


def test_three_signals_that_agree_give_one_supported_map():
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    similarity = planted_similarity((4, 10, 14))
    stage_map, raised = quiet_map(neurons, staged_lens((4, 10, 14)), similarity=similarity, stats=stats,
                                  n_boot=5)
    assert set(stage_map.by_signal) == {"neurons", "lens", "similarity", "neurons+lens+similarity"}
    assert stage_map.signals == ("neurons", "lens", "similarity")
    assert all(fit.boundaries == (4, 10, 14) for fit in stage_map.by_signal.values())
    assert stage_map.boundaries == (4, 10, 14) and raised == [] and stage_map.warnings == ()
    assert stage_map.verdict.level == "supported"
    check = {c.name: c for c in stage_map.by_signal["similarity"].checks}
    assert check["highest_similarity_in_shared_reasoning"].holds
    assert list(stage_map.agreement.columns) == ["boundary", "neurons", "lens", "similarity", "difference",
                                                 "agree"]
    assert (stage_map.agreement["difference"] == 0).all()
    assert "stage_similarity" in stage_map.to_frame().columns
    assert "representation-similarity" in stage_map.label()
    # The similarity features are the mean over items and pairs of value - null.
    features = stage_map.to_frame()["f_similarity"].to_numpy()
    expected = (similarity.values[0] - similarity.null[0]).mean(dim=(0, 1)).numpy()
    assert np.allclose(features, expected)
    assert set(stage_map.by_signal["similarity"].stability) == set(stage_map.stability)


def test_a_similarity_map_that_disagrees_is_said_and_weakens_the_verdict():
    stats, neurons = planted_neurons(LANGUAGE, GENERAL)
    stage_map, raised = quiet_map(neurons, staged_lens((4, 10, 14)), similarity=planted_similarity((7, 12, 14)),
                                  stats=stats, n_boot=0, n_null=200)
    assert stage_map.by_signal["similarity"].boundaries == (7, 12, 14)
    assert stage_map.agreement["difference"].tolist() == [3, 2, 0]  # the spread of the three
    assert stage_map.agreement["agree"].tolist() == [False, True, True]
    (sentence,) = [w for w in raised if "disagree" in w]
    assert sentence.startswith("The neuron-class, logit-lens and similarity maps disagree on where shared "
                               "reasoning begins: layer 4 by the neurons, layer 4 by the lens, layer 7 by "
                               "the similarity (3 layers apart)")
    assert stage_map.verdict.level == "weak" and "signals disagree by 3 layers" in stage_map.verdict.reasons


def test_similarity_highest_outside_shared_reasoning_breaks_its_signature():
    similarity = planted_similarity((4, 10, 14), levels=(0.05, 0.2, 0.4, 0.8))
    stage_map, raised = quiet_map(similarity=similarity, n_boot=0, n_null=200)
    fit = stage_map.by_signal["similarity"]
    check = {c.name: c for c in fit.checks}["highest_similarity_in_shared_reasoning"]
    assert not check.holds
    assert "in the best unconstrained fit the similarity is highest in vocabulary output" in check.detail
    assert any('"shared reasoning holds the highest cross-lingual similarity" does not hold' in w
               for w in raised)
    # Where the similarity signal holds its signature alone, the map is its own.
    alone, raised = quiet_map(similarity=planted_similarity((3, 9, 13)), n_boot=10)
    assert alone.boundaries == (3, 9, 13) and alone.verdict.level == "supported" and raised == []
    assert alone.stability["understanding|shared_reasoning"] == 1.0


def test_a_saved_map_keeps_its_verdict_and_an_older_file_is_judged_on_load(tmp_path):
    stats, neurons = planted_neurons(LANGUAGE, EARLY_GENERAL, d_mlp=600)
    stage_map, _ = quiet_map(neurons, stats=stats, n_boot=0, n_null=200)
    loaded = tlm.StageMap.load(stage_map.save(tmp_path / "stages.json"))
    assert loaded.verdict == stage_map.verdict and loaded.choice == "unconstrained"
    assert loaded.by_signal["neurons"].imposed == (1, 2, 3)
    assert loaded.constrained_map().verdict.level == "not supported"
    older = stage_map.to_dict()
    for key in ("verdict", "choice", "alpha", "tolerance"):
        del older[key]
    assert tlm.StageMap.from_dict(older).verdict == stage_map.verdict
