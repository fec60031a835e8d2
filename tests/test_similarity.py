"""Cross-lingual representation similarity: a brute-force check with plain forward hooks
(every pair, padding present, both poolings), planted residual streams whose shared
layers are known, the shuffled-pair null and the bootstrap intervals recomputed here,
refusals, save/load, the figure, and two gloo processes against one."""

from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import require

import tl_multilingual as tlm
from tl_multilingual import resample
from tl_multilingual.model.adapters import ModelAdapter
from tl_multilingual.stages.similarity import MEASURES, SimilarityResult, representation_similarity

TEXTS = {
    "en": [
        "The cat sleeps on the warm mat.",
        "We walked to the market in the morning.",
        "Numbers: 12 plus 30 is 42.",
        "The market opens early.",
        "A warm morning.",
        "The cat and the mat sleep in the morning sun.",
    ],
    "fr": [
        "Le chat dort sur le tapis chaud.",
        "Nous avons marché au marché le matin.",
        "Douze plus trente.",
        "Le marché ouvre tôt.",
        "Un matin chaud.",
        "Le chat et le tapis dorment au soleil du matin.",
    ],
    "zh": [
        "猫在温暖的垫子上睡觉。",
        "我们早上走到市场。",
        "十二加三十等于四十二。",
        "市场很早开门。",
        "温暖的早上。",
        "猫和垫子在早上的阳光里睡觉。",
    ],
}


@pytest.fixture(scope="module")
def lm():
    return tlm.adapt(tlm.models.tiny("llama", n_layers=3))


def brute_force_vectors(lm, corpus, pooling):
    """Pooled residual streams, one text at a time (no padding), with plain forward hooks
    on ``blocks.{l}.hook_resid_post``: ``[n_items, n_langs, n_layers, d_model]``."""
    model = lm.model
    out = np.zeros(
        (len(corpus[corpus.languages[0]]), len(corpus.languages), lm.n_layers, lm.d_model)
    )
    for k, lang in enumerate(corpus.languages):
        for i, text in enumerate(corpus[lang]):
            ids = torch.tensor([lm.tokenize([text.text])[0]])
            seen = {}

            def keep(tensor, hook, seen=seen):
                seen[len(seen)] = tensor[0].detach().double()

            hooks = [(f"blocks.{layer}.hook_resid_post", keep) for layer in range(lm.n_layers)]
            with torch.no_grad(), model.hooks(fwd_hooks=hooks):
                model(ids)
            for layer in range(lm.n_layers):
                resid = seen[layer]
                out[i, k, layer] = (resid[1:].mean(0) if pooling == "mean" else resid[-1]).numpy()
    return out


def brute_force_measures(vectors, partner):
    """Every measure of every language pair and layer with loops over item pairs, item
    ``i`` of ``a`` paired with item ``partner[i]`` of ``b``: ``[3, n_items, n_pairs, n_layers]``."""
    n, n_langs, n_layers, _ = vectors.shape
    pairs = list(itertools.combinations(range(n_langs), 2))
    out = np.zeros((3, n, len(pairs), n_layers))
    for p, (a, b) in enumerate(pairs):
        for layer in range(n_layers):
            za = vectors[:, a, layer] - vectors[:, a, layer].mean(0)
            zb = vectors[:, b, layer] - vectors[:, b, layer].mean(0)
            za /= np.linalg.norm(za, axis=1, keepdims=True)
            zb /= np.linalg.norm(zb, axis=1, keepdims=True)
            cos = [[float(np.dot(za[i], zb[j])) for j in range(n)] for i in range(n)]
            for i in range(n):
                t = partner[i]
                out[0, i, p, layer] = cos[i][t]
                others = [cos[i][j] for j in range(n) if j != t] + [
                    cos[k][t] for k in range(n) if k != i
                ]
                out[1, i, p, layer] = sum(others) / len(others)
                a_finds = all(cos[i][t] > cos[i][j] for j in range(n) if j != t)
                b_finds = all(cos[i][t] > cos[k][t] for k in range(n) if k != i)
                out[2, i, p, layer] = (a_finds + b_finds) / 2
    return out


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_similarity_equals_a_brute_force_computation(lm, pooling):
    """Every measure and its null equal loops over every item pair of every language pair
    on vectors pooled one text at a time; the pass itself pads (batches of 4 texts of
    different lengths)."""
    corpus = tlm.Corpus.from_dict(TEXTS)
    lengths = [
        len(ids) for lang in corpus.languages for ids in lm.tokenize([t.text for t in corpus[lang]])
    ]
    assert len(set(lengths)) > 4  # padded batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few items
        result = representation_similarity(
            lm, corpus, pooling=pooling, batch_size=4, n_shuffles=7, seed=3
        )
    vectors = brute_force_vectors(lm, corpus, pooling)
    n = vectors.shape[0]
    assert result.pairs == (("en", "fr"), ("en", "zh"), ("fr", "zh"))
    assert result.values.shape == (3, n, 3, lm.n_layers) and result.values.dtype == torch.float64
    expected = brute_force_measures(vectors, list(range(n)))
    np.testing.assert_allclose(result.values[:2].numpy(), expected[:2], atol=2e-5)
    np.testing.assert_array_equal(result.values[2].numpy(), expected[2])
    shuffles = result.shuffles.numpy()
    assert shuffles.shape == (7, n)
    for perm in shuffles:
        assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    null = np.mean([brute_force_measures(vectors, list(perm)) for perm in shuffles], axis=0)
    np.testing.assert_allclose(result.null[:2].numpy(), null[:2], atol=2e-5)
    np.testing.assert_allclose(result.null[2].numpy(), null[2], atol=1e-12)


def test_intervals_are_percentile_bootstraps_over_items(lm):
    """``to_frame`` and ``summary``: means over items, percentile intervals over the
    shared draws of items, the excess paired with the null; recomputed here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = representation_similarity(lm, tlm.Corpus.from_dict(TEXTS), n_shuffles=5)
    frame = result.to_frame(n_boot=300, seed=4, ci=0.9)
    assert len(frame) == lm.n_layers * 3 * 3
    assert list(frame[["layer", "pair"]].drop_duplicates().itertuples(index=False)) == [
        (layer, pair) for layer in range(lm.n_layers) for pair in ("en-fr", "en-zh", "fr-zh")
    ]
    draws = resample.draws(result.n_items, 300, 4)

    def interval(per_item):
        replicates = per_item[draws].mean(1)
        return per_item.mean(), *np.quantile(replicates, [0.05, 0.95])

    for row in frame.itertuples():
        m, p = MEASURES.index(row.measure), result.pairs.index((row.language_a, row.language_b))
        values, null = (
            result.values[m, :, p, row.layer].numpy(),
            result.null[m, :, p, row.layer].numpy(),
        )
        assert (row.value, row.ci_low, row.ci_high) == pytest.approx(interval(values), abs=1e-12)
        assert (row.null, row.null_low, row.null_high) == pytest.approx(interval(null), abs=1e-12)
        assert (row.excess, row.excess_low, row.excess_high) == pytest.approx(
            interval(values - null), abs=1e-12
        )
        assert row.n_items == 6
    summary = result.summary(n_boot=300, seed=4, ci=0.9)
    assert len(summary) == 3 * lm.n_layers and set(summary["n_pairs"]) == {3}
    for row in summary.itertuples():
        m = MEASURES.index(row.measure)
        values = result.values[m, :, :, row.layer].mean(1).numpy()
        null = result.null[m, :, :, row.layer].mean(1).numpy()
        assert (row.value, row.ci_low, row.ci_high) == pytest.approx(interval(values), abs=1e-12)
        assert (row.excess, row.excess_low, row.excess_high) == pytest.approx(
            interval(values - null), abs=1e-12
        )
    curves = result.curves()
    assert curves["translation"].tolist() == pytest.approx(result.values[0].mean((0, 1)).tolist())
    assert curves["retrieval_null"].tolist() == pytest.approx(result.null[2].mean((0, 1)).tolist())
    excess = result.curves(excess=True)
    assert excess["translation"].tolist() == pytest.approx(
        (result.values[0] - result.null[0]).mean((0, 1)).tolist()
    )


# -- planted residual streams --------------------------------------------------------------

SHARED = range(4, 8)


def planted_pass(monkeypatch, lm, corpus, seed=0):
    """Replace the residual stream after every block, before anything reads it: for text
    ``(item, language)`` at layer ``l`` it is ``10 * offset[language] + noise[text, l]``,
    plus ``3 * shared[item]`` for English and French (and ``3 * own[item]`` for German)
    in layers 4-7 only. The row's text is found from its real tokens."""
    g = torch.Generator().manual_seed(seed)
    d, n, n_layers = lm.d_model, len(corpus["en"]), lm.n_layers
    languages = list(corpus.languages)
    offset = 10 * torch.randn(len(languages), d, generator=g)
    noise = torch.randn(n, len(languages), n_layers, d, generator=g)
    content = {"en": torch.randn(n, d, generator=g)}
    content["fr"] = content["en"]
    content["de"] = torch.randn(n, d, generator=g)
    who = {}
    for k, lang in enumerate(languages):
        for i, ids in enumerate(lm.tokenize([t.text for t in corpus[lang]])):
            who[tuple(ids)] = (i, k)
    assert len(who) == n * len(languages)
    original = ModelAdapter.forward

    def planted(self, batch, *, fwd_hooks=(), **kwargs):
        rows = [
            who[tuple(ids[mask.bool()].tolist())]
            for ids, mask in zip(batch.input_ids, batch.attention_mask)
        ]

        def replace(layer):
            def hook(tensor, hook):
                vectors = []
                for i, k in rows:
                    v = offset[k] + noise[i, k, layer]
                    if layer in SHARED:
                        v = v + 3 * content[languages[k]][i]
                    vectors.append(v)
                return torch.stack(vectors)[:, None, :].expand_as(tensor).to(tensor.dtype).clone()

            return hook

        planted_hooks = [(self.resid_hook(layer), replace(layer)) for layer in range(self.n_layers)]
        return original(self, batch, fwd_hooks=[*planted_hooks, *fwd_hooks], **kwargs)

    monkeypatch.setattr(ModelAdapter, "forward", planted)


def planted_corpus(n=24):
    import random

    pools = {
        lang: " ".join(tlm.models.SAMPLE_TEXT[lang]).replace(".", "").split()
        for lang in ("en", "fr", "de")
    }
    rng = random.Random(0)
    texts = {
        lang: [f"{i} " + " ".join(rng.choice(pool) for _ in range(3 + i % 5)) for i in range(n)]
        for lang, pool in pools.items()
    }
    return tlm.Corpus.from_dict(texts)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_planted_shared_layers_peak_and_the_null_stays_near_zero(monkeypatch, pooling):
    """English and French share a representation in layers 4-7 only (German does not):
    the translation curve of en-fr is high there and near zero elsewhere, the pairs with
    German stay near zero, retrieval is perfect there only, the mean over pairs peaks
    inside 4-7, and the shuffled-pair null stays near zero everywhere."""
    lm = tlm.adapt(tlm.models.tiny("llama", n_layers=12))
    corpus = planted_corpus()
    planted_pass(monkeypatch, lm, corpus)
    result = representation_similarity(lm, corpus, pooling=pooling, batch_size=5, n_shuffles=50)
    frame = result.to_frame(n_boot=200)
    translation = frame[frame.measure == "translation"].pivot(
        index="layer", columns="pair", values="value"
    )
    inside = translation.index.isin(SHARED)
    assert (translation.loc[inside, "en-fr"] > 0.8).all()
    assert (translation.loc[~inside, "en-fr"].abs() < 0.15).all()
    assert (translation[["en-de", "fr-de"]].abs() < 0.15).all().all()
    retrieval = frame[(frame.measure == "retrieval") & (frame.pair == "en-fr")].set_index("layer")[
        "value"
    ]
    assert (retrieval[inside] == 1.0).all() and (retrieval[~inside] < 0.5).all()
    # Centred vectors of a language sum to zero, so a shuffled pair's expected cosine is
    # about -translation / (n - 1): -0.04 where en-fr share, 0 elsewhere.
    null = frame[frame.measure == "translation"]["null"]
    assert null.abs().max() < 0.08
    retrieval_null = frame[frame.measure == "retrieval"]["null"]
    assert retrieval_null.max() < 0.2  # chance is 1/24
    summary = result.summary(n_boot=200)
    mean = summary[summary.measure == "translation"].set_index("layer")
    assert int(mean["value"].idxmax()) in SHARED
    assert (mean.loc[list(SHARED), "excess_low"] > 0.2).all()
    peak = result.peak("translation", n_boot=200)
    assert (
        peak["layer"] in SHARED
        and SHARED.start <= peak["ci_low"] <= peak["ci_high"] <= SHARED.stop - 1
    )
    diff = (result.values[0] - result.null[0]).mean(1).numpy()
    assert peak["excess"] == pytest.approx(diff.mean(0)[peak["layer"]])


def test_a_legacy_hookedtransformer_gives_what_its_bridge_gives():
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        pytest.skip("HookedTransformer exists only in TransformerLens 3.x")
    import tiny

    hooked, bridged = tiny.hooked_and_bridge("llama")
    corpus = tlm.data.parallel(["en", "fr", "zh"]).head(10)
    a = representation_similarity(hooked, corpus, n_shuffles=3, batch_size=4)
    b = representation_similarity(bridged, corpus, n_shuffles=3, batch_size=4)
    assert tlm.adapt(hooked).kind == "hooked"
    torch.testing.assert_close(a.values[:2], b.values[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.null[:2], b.null[:2], atol=1e-5, rtol=0)


# -- refusals, warnings, save and load -------------------------------------------------------


def test_a_non_parallel_corpus_and_bad_options_are_refused(lm):
    uneven = tlm.Corpus.from_dict({"en": TEXTS["en"], "fr": TEXTS["fr"][:4]})
    with pytest.raises(tlm.CorpusError, match="parallel corpus.*'en': 6, 'fr': 4"):
        representation_similarity(lm, uneven)
    with pytest.raises(tlm.CorpusError, match="at least two languages"):
        representation_similarity(lm, tlm.Corpus.from_dict({"en": TEXTS["en"]}))
    with pytest.raises(tlm.CorpusError, match="at least 3 parallel items"):
        representation_similarity(
            lm, tlm.Corpus.from_dict({"en": TEXTS["en"][:2], "fr": TEXTS["fr"][:2]})
        )
    corpus = tlm.Corpus.from_dict({"en": TEXTS["en"], "fr": TEXTS["fr"]})
    with pytest.raises(tlm.CorpusError, match="pooling must be one of"):
        representation_similarity(lm, corpus, pooling="max")
    with pytest.raises(tlm.CorpusError, match="overflow='split'"):
        representation_similarity(lm, corpus, overflow="split")
    with pytest.raises(tlm.CorpusError, match="needs a Corpus"):
        representation_similarity(lm, TEXTS)
    empty = tlm.Corpus.from_dict({"en": TEXTS["en"][:3] + [""], "fr": TEXTS["fr"][:4]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(tlm.CorpusError, match="text 3 of 'en' gives no token to pool"):
            representation_similarity(lm, empty)


def test_few_items_warn_and_enough_items_do_not(lm):
    small = tlm.Corpus.from_dict({"en": TEXTS["en"], "fr": TEXTS["fr"]})
    with pytest.warns(tlm.TLMultilingualWarning, match="only 6 parallel items"):
        representation_similarity(lm, small, n_shuffles=2)
    enough = tlm.Corpus.from_dict({"en": TEXTS["en"] * 2, "fr": TEXTS["fr"] * 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        representation_similarity(lm, enough, n_shuffles=2)


def test_save_and_load_keep_everything_with_provenance(lm, tmp_path):
    from tl_multilingual.provenance import weight_fingerprint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = representation_similarity(
            lm, tlm.Corpus.from_dict(TEXTS), pooling="last", n_shuffles=4
        )
    result.save(tmp_path / "sim")
    loaded = SimilarityResult.load(tmp_path / "sim")
    for name in ("values", "null", "shuffles"):
        assert torch.equal(getattr(loaded, name), getattr(result, name))
    assert loaded.languages == result.languages and loaded.pairs == result.pairs
    assert loaded.pooling == "last" and loaded.include_bos is False
    assert loaded.model == lm.describe() and loaded.corpus == result.corpus
    assert loaded.provenance == {
        "name": "tiny-llama",
        "architecture": lm.architecture,
        "weights": weight_fingerprint(lm.model),
        "shape": (lm.n_layers, lm.d_mlp),
    }
    import json

    manifest = json.loads((tmp_path / "sim" / "manifest.json").read_text())
    assert manifest["provenance"]["shape"] == [lm.n_layers, lm.d_mlp]
    manifest["pooling"] = "max"
    (tmp_path / "sim" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(tlm.SaveError, match="checksum"):
        SimilarityResult.load(tmp_path / "sim")


def test_the_figure_draws_every_pair_and_the_mean(lm, tmp_path):
    require("matplotlib")
    from tl_multilingual.study import plot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = representation_similarity(lm, tlm.Corpus.from_dict(TEXTS), n_shuffles=3)
    frame, summary = result.to_frame(n_boot=50), result.summary(n_boot=50)
    fig = plot.similarity_curves(frame, summary)
    assert len(fig.axes) == 3
    for ax, measure in zip(fig.axes, MEASURES):
        lines = {line.get_label(): line.get_ydata() for line in ax.get_lines()}
        for pair in ("en-fr", "en-zh", "fr-zh"):
            expected = frame[(frame.measure == measure) & (frame.pair == pair)]["value"].to_numpy()
            np.testing.assert_allclose(lines[pair], expected)
        mean = summary[summary.measure == measure]
        np.testing.assert_allclose(lines["mean"], mean["value"].to_numpy())
        np.testing.assert_allclose(lines["shuffled null"], mean["null"].to_numpy())
    assert [p.suffix for p in plot.save(fig, tmp_path / "similarity")] == [".png", ".pdf"]
    with pytest.raises(tlm.TLMultilingualError, match="no measure"):
        plot.similarity_curves(frame, measures=["cka"])


# -- two processes ---------------------------------------------------------------------------


def test_two_gloo_processes_give_the_same_similarity_as_one(tmp_path):
    import similarity_worker
    import torch.multiprocessing as mp
    from test_distributed import free_port

    results = tmp_path / "ok"
    context = mp.start_processes(
        similarity_worker.run,
        args=(2, free_port(), str(results)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the distributed workers did not finish in time")
    assert results.read_text() == "ok"
