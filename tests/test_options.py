"""No silent option: each option below changes the result it documents, checked against a
known answer, so that a call which ignored it (or inverted a flag) would fail here.

These are the options that no module's own tests reach; ``tools/mutants.py --options``
rebinds every option of every public function to its default (and every flag to its
negation) and runs this file beside the module's tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import tiny
import torch
from conftest import require

import tl_multilingual as tlm
from tl_multilingual.causal import evaluate
from tl_multilingual.errors import ContextLengthError, TruncationWarning
from tl_multilingual.experiments.sharing_experiments import (
    boost_experiment,
    correct_vs_incorrect,
    item_correctness,
)
from tl_multilingual.neurons.sharing_classes import item_activations

FOREIGN = {"name": "tiny-gpt2", "architecture": "GPT2LMHeadModel", "n_layers": 2, "d_mlp": 48}
EN = " ".join(tiny.SAMPLE_TEXT["en"])
FR = " ".join(tiny.SAMPLE_TEXT["fr"])
LIMIT = 12  # EN is 44 tokens long


@pytest.fixture(scope="module")
def llama():
    return tlm.adapt(tiny.bridge("llama"))


@pytest.fixture(scope="module")
def corpus():
    return tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)


@pytest.fixture(scope="module")
def stats(llama, corpus):
    return tlm.collect_stats(llama, corpus, progress=False)


@pytest.fixture(scope="module")
def neurons(stats):
    return tlm.identify(stats, method="lape", top_rate=0.1)


def items(n=2):
    records = [{"id": f"q{i}", "text": {"en": EN, "fr": FR},
                "answer": {"en": " mat", "fr": " tapis"}} for i in range(n)]
    return tlm.ParallelItems.from_records(records)


def write_hook(lm, batch, layer=1):
    """The write-hook values of ``layer`` in one run, with any intervention attached."""
    seen = {}

    def keep(tensor, hook):
        seen["values"] = tensor.detach().clone()

    lm.forward(batch, fwd_hooks=[(lm.write_hook(layer), keep)])
    return seen["values"]


# -- the length policy: max_length and overflow reach every call that feeds text ------------


def _length_calls():
    long = tlm.Corpus.from_dict({"en": [EN], "fr": [FR]})
    choice = {"en": [tlm.MultipleChoice(EN, (" mat", " rug"), 0)]}
    lens_prompts = [tlm.LensPrompt(EN, {"en": "mat"})]

    def stage_effects(lm, n, **kw):
        deep = tlm.adapt(tiny.bridge("llama", n_layers=4))
        stage_map = tlm.StageMap.from_boundaries(4, (1, 2, 3), d_mlp=deep.d_mlp)
        membership = torch.zeros(4, deep.d_mlp, 2, dtype=torch.bool)
        membership[0, :4, 0] = membership[0, 4:8, 1] = True
        mine = tlm.LanguageNeurons(("en", "fr"), membership, membership.any(-1), None,
                                   method="reference")
        return tlm.stage_effects(deep, mine, stage_map, long, languages=["en"],
                                 stages=["understanding"], controls=0, n_boot=10, progress=False,
                                 **kw)

    return {
        "collect_stats": lambda lm, n, **kw: tlm.collect_stats(lm, long, progress=False, **kw),
        "text_nll": lambda lm, n, **kw: evaluate.text_nll(lm, long, **kw),
        "perplexity": lambda lm, n, **kw: tlm.perplexity(lm, long, **kw),
        "option_logprobs": lambda lm, n, **kw: evaluate.option_logprobs(lm, [(EN, [" mat"])], **kw),
        "continuation_logprobs": lambda lm, n, **kw: evaluate.continuation_logprobs(
            lm, [(EN, " mat")], **kw),
        "choice_scores": lambda lm, n, **kw: evaluate.choice_scores(lm, choice, **kw),
        "choice_accuracy": lambda lm, n, **kw: tlm.choice_accuracy(lm, choice, **kw),
        "generate": lambda lm, n, **kw: tlm.generate(lm, [EN], max_new_tokens=1, **kw),
        "answer_accuracy": lambda lm, n, **kw: tlm.answer_accuracy(
            lm, {"en": [(EN, "mat")]}, lambda out, ans: ans in out, max_new_tokens=1, **kw),
        "deactivation_matrix": lambda lm, n, **kw: tlm.deactivation_matrix(
            lm, n, long, languages=["en"], controls=0, n_boot=10, progress=False, **kw),
        "stage_effects": stage_effects,
        "language_lens": lambda lm, n, **kw: tlm.language_lens(lm, lens_prompts, progress=False,
                                                               **kw),
        "representation_similarity": lambda lm, n, **kw: tlm.representation_similarity(
            lm, tlm.Corpus.from_dict({"en": [EN] * 3, "fr": [FR] * 3}), n_shuffles=2,
            progress=False, **kw),
        "patch_neurons": lambda lm, n, **kw: tlm.patch_neurons(
            lm, source=[EN], target=[FR], mask=tlm.NeuronMask.full(lm.n_layers, lm.d_mlp),
            controls=0, readout=["fr"], **kw),
        "sharing": lambda lm, n, **kw: tlm.sharing(lm, items(), progress=False, **kw),
        "item_activations": lambda lm, n, **kw: item_activations(lm, [EN], **kw),
        "attribute": lambda lm, n, **kw: tlm.attribute(lm, items(), progress=False, **kw),
        "item_correctness": lambda lm, n, **kw: item_correctness(lm, items(), **kw),
        "correct_vs_incorrect": lambda lm, n, **kw: correct_vs_incorrect(lm, items(), **kw),
        "boost_experiment": lambda lm, n, **kw: boost_experiment(
            lm, items(), factors=(2.0,), controls=0, n_boot=10, progress=False, **kw),
    }


LENGTH_CALLS = _length_calls()


@pytest.mark.parametrize("call", sorted(LENGTH_CALLS))
def test_max_length_and_overflow_reach_every_call(llama, neurons, call):
    run = LENGTH_CALLS[call]
    with pytest.raises(ContextLengthError, match=f"more than max_length={LIMIT} "):
        run(llama, neurons, max_length=LIMIT, overflow="error")
    with pytest.warns(TruncationWarning, match=f"longer than max_length={LIMIT} tokens"):
        run(llama, neurons, max_length=LIMIT, overflow="truncate")


def own_nll(lm, ids):
    """Summed NLL (nats) of ``ids[1:]`` given what precedes each, from one forward pass."""
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids]))[0].double()
    logp = torch.log_softmax(logits[:-1], -1)
    return -float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())


def test_rolling_scores_split_pieces_or_the_beginning(llama):
    ids = llama.tokenize([EN])[0]
    bos, rest = ids[:1], ids[1:]
    # "split": pieces of LIMIT tokens, each BOS + the next LIMIT - 1 tokens.
    pieces = [bos + rest[i:i + LIMIT - 1] for i in range(0, len(rest), LIMIT - 1)]
    ((total, n),) = evaluate.rolling_logprobs(llama, [EN], max_length=LIMIT)
    assert n == len(rest)
    assert total == pytest.approx(-sum(own_nll(llama, p) for p in pieces), rel=1e-4)
    # "truncate": the beginning only.
    with pytest.warns(TruncationWarning, match=f"max_length={LIMIT}"):
        ((total, n),) = evaluate.rolling_logprobs(llama, [EN], max_length=LIMIT,
                                                  overflow="truncate")
    assert n == LIMIT - 1
    assert total == pytest.approx(-own_nll(llama, ids[:LIMIT]), rel=1e-4)
    with pytest.raises(ContextLengthError, match=f"max_length={LIMIT}"):
        evaluate.rolling_logprobs(llama, [EN], max_length=LIMIT, overflow="error")


# -- the intervention verbs: layers and allow_mismatch ------------------------------------------


def _verbs():
    def steer(lm, mask, stats, **kw):
        return tlm.steer(lm, mask, to="fr", stats=stats, **kw)

    return {
        "ablate": lambda lm, mask, stats, **kw: tlm.ablate(lm, mask, **kw),
        "boost": lambda lm, mask, stats, **kw: tlm.boost(lm, mask, factor=3.0, **kw),
        "steer": steer,
        "patch": lambda lm, mask, stats, **kw: tlm.patch(
            lm, mask, torch.full((lm.n_layers, lm.d_mlp), 0.5), **kw),
        "intervene": lambda lm, mask, stats, **kw: tlm.intervene(lm, [tlm.Edit(mask, "set", 0.25)],
                                                                 **kw),
    }


VERBS = _verbs()


def edited_run(lm, batch, intervention):
    with intervention:
        return [write_hook(lm, batch, layer) for layer in range(lm.n_layers)]


@pytest.fixture(scope="module")
def batch(llama):
    return llama.pad(llama.tokenize([EN, FR]))


@pytest.mark.parametrize("verb", sorted(set(VERBS) - {"intervene"}))
def test_layers_equal_the_mask_restricted_by_hand(llama, stats, batch, verb):
    run = VERBS[verb]
    mask = tlm.NeuronMask.from_pairs([(0, 2), (0, 5), (1, 2), (1, 7)], llama.n_layers, llama.d_mlp)
    clean = [write_hook(llama, batch, layer) for layer in range(llama.n_layers)]
    got = edited_run(llama, batch, run(llama, mask, stats, layers=[1]))
    by_hand = edited_run(llama, batch, run(llama, mask.restrict([1]), stats))
    everywhere = edited_run(llama, batch, run(llama, mask, stats))
    assert torch.equal(got[0], clean[0]) and torch.equal(got[1], by_hand[1])
    assert not torch.equal(everywhere[0], clean[0])  # the edit does reach layer 0 otherwise


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_allow_mismatch_accepts_a_mask_of_another_model_as_its_own(llama, stats, batch, verb):
    run = VERBS[verb]
    mask = tlm.NeuronMask.from_pairs([(0, 2), (1, 7)], llama.n_layers, llama.d_mlp)
    foreign = tlm.NeuronMask(mask.tensor, model=FOREIGN)
    with pytest.raises(tlm.MaskError, match="allow_mismatch=True"):
        run(llama, foreign, stats)
    got = edited_run(llama, batch, run(llama, foreign, stats, allow_mismatch=True))
    own = edited_run(llama, batch, run(llama, mask, stats))
    assert all(torch.equal(a, b) for a, b in zip(got, own))


def test_steer_allow_mismatch_accepts_statistics_of_another_model(llama, stats, batch):
    mask = tlm.NeuronMask.from_pairs([(1, 3), (1, 9)], llama.n_layers, llama.d_mlp)
    foreign = tlm.ActivationStats.from_counts(
        list(stats.languages), stats.tokens, stats.active_counts, sums=stats.sums,
        sum_squares=stats.sum_squares, model=FOREIGN)
    with pytest.raises(tlm.StatsError, match="allow_mismatch=True"):
        tlm.steer(llama, mask, to="fr", stats=foreign)
    with pytest.raises(tlm.StatsError, match="allow_mismatch=True"):
        tlm.ablate(llama, mask, value="mean", stats=foreign)
    for verb in (lambda s, **kw: tlm.steer(llama, mask, to="fr", stats=s, **kw),
                 lambda s, **kw: tlm.ablate(llama, mask, value="mean", stats=s, **kw)):
        got = edited_run(llama, batch, verb(foreign, allow_mismatch=True))
        own = edited_run(llama, batch, verb(stats))
        assert all(torch.equal(a, b) for a, b in zip(got, own))


def test_record_keeps_only_the_layers_asked_for(llama, batch):
    every = tlm.record(llama, batch)
    one = tlm.record(llama, batch, layers=[1])
    assert torch.equal(one[..., 1, :], every[..., 1, :])
    assert torch.equal(one[..., 0, :], torch.zeros_like(one[..., 0, :]))
    assert every[..., 0, :].abs().sum() > 0


@pytest.mark.parametrize("verb", sorted(set(VERBS) - {"intervene"}))
def test_positions_edit_only_those_positions(llama, stats, verb):
    # One text, no padding: position i is the text's i-th token, -1 its last.
    run = VERBS[verb]
    single = llama.pad(llama.tokenize([EN]))
    mask = tlm.NeuronMask.from_pairs([(1, 2), (1, 7)], llama.n_layers, llama.d_mlp)
    clean = write_hook(llama, single)
    everywhere = edited_run(llama, single, run(llama, mask, stats))[1]
    got = edited_run(llama, single, run(llama, mask, stats, positions=[1, -1]))[1]
    at = torch.zeros(single.input_ids.shape[1], dtype=torch.bool)
    at[[1, -1]] = True
    assert torch.equal(got[0, at], everywhere[0, at])
    assert torch.equal(got[0, ~at], clean[0, ~at])
    assert not torch.equal(everywhere[0, ~at], clean[0, ~at])


# -- the experiments: the bootstrap (ci, n_boot), the controls (seed), what is deactivated -----
#
# With two bootstrap replicates r1 <= r2 the percentile interval of coverage c is
# [r1 + (1 - c) / 2 * (r2 - r1), r2 - (1 - c) / 2 * (r2 - r1)]: its width is c * (r2 - r1)
# and its middle does not depend on c. So intervals drawn with the same seed at two
# coverages must have widths in the ratio of the coverages, and the same middles.


def assert_coverage_ratio(narrow, wide, low="ci_low", high="ci_high", c=(0.5, 0.9)):
    w_narrow = (narrow[high] - narrow[low]).to_numpy(float)
    w_wide = (wide[high] - wide[low]).to_numpy(float)
    assert (w_wide > 0).any()
    np.testing.assert_allclose(w_narrow, w_wide * c[0] / c[1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose((narrow[high] + narrow[low]).to_numpy(float),
                               (wide[high] + wide[low]).to_numpy(float), rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def three(llama):
    return tlm.Corpus.from_dict({k: tiny.SAMPLE_TEXT[k] for k in ("en", "fr", "zh")})


@pytest.fixture(scope="module")
def lape(llama, three):
    stats = tlm.collect_stats(llama, three, progress=False)
    return tlm.identify(stats, method="lape", top_rate=0.1)


def deactivate(llama, lape, three, **kw):
    options = dict(classes=["language"], controls=0, n_boot=2, progress=False) | kw
    return tlm.deactivation_matrix(llama, lape, three, **options).frame


def perplexity_under(lm, corpus, language, mask):
    """exp(summed NLL / scored tokens) of ``language``'s texts, each scored here."""
    texts = [t.text for t in corpus[language]]
    with tlm.ablate(lm, mask):
        nll = sum(own_nll(lm, ids) for ids in lm.tokenize(texts))
    return float(np.exp(nll / sum(len(ids) - 1 for ids in lm.tokenize(texts))))


def test_deactivation_ci_and_n_boot_set_the_interval(llama, lape, three):
    narrow = deactivate(llama, lape, three, ci=0.5, seed=3)
    wide = deactivate(llama, lape, three, ci=0.9, seed=3)
    assert_coverage_ratio(narrow, wide)


def test_deactivation_seed_draws_the_controls(llama, lape, three):
    frame = deactivate(llama, lape, three, controls=1, seed=7).set_index(["ablated", "evaluated"])
    # One block (the whole evaluation set): its controls are drawn with the seed itself.
    (control,) = lape.language("fr").controls(1, seed=7)
    expected = perplexity_under(llama, three, "en", control)
    assert frame.loc[("fr", "en"), "control_value"] == pytest.approx(expected, rel=1e-6)


def test_deactivation_languages_and_layers_choose_what_is_deactivated(llama, lape, three):
    frame = deactivate(llama, lape, three, languages=["fr"], layers=[1])
    assert set(frame["ablated"]) == {"fr"}
    mask = lape.language("fr").restrict([1])
    row = frame.set_index("evaluated").loc["zh"]
    assert row["n_neurons"] == mask.count() < lape.language("fr").count()
    assert row["value"] == pytest.approx(perplexity_under(llama, three, "zh", mask), rel=1e-6)


def test_deactivation_allow_mismatch_takes_neurons_of_another_model_as_its_own(llama, lape, three):
    foreign = tlm.LanguageNeurons(lape.languages, lape.membership, lape.selected().tensor, None,
                                  method="lape", source={"model": FOREIGN})
    with pytest.raises(tlm.IdentificationError, match="allow_mismatch=True"):
        deactivate(llama, foreign, three, languages=["fr"])
    got = deactivate(llama, foreign, three, languages=["fr"], allow_mismatch=True)
    own = deactivate(llama, lape, three, languages=["fr"])
    assert got.equals(own)


# -- the summaries of results: ci, n_boot, seed ------------------------------------------------

WORDS = [{"en": w, "fr": f, "de": d} for w, f, d in
         (("cat", "chat", "Katze"), ("mat", "tapis", "Matte"), ("morning", "matin", "Morgen"),
          ("market", "marché", "Markt"))]


def two_replicates(values, unit_draws, ci):
    """The percentile interval of the means of ``values`` over two draws of units."""
    reps = np.nanmean(values[unit_draws], axis=1)
    return tuple(np.quantile(reps, [(1 - ci) / 2, (1 + ci) / 2]))


def test_lens_summary_ci_n_boot_seed(llama):
    from tl_multilingual.resample import draws

    prompts = tlm.prompts.translation(WORDS, src="fr", tgt="en", shots=1)
    result = tlm.language_lens(llama, prompts, progress=False)
    summary = result.summary(ci=0.5, n_boot=2, seed=5)
    entropy = summary[summary["quantity"] == "entropy"].set_index("layer")
    unit_draws = draws(len(prompts), 2, 5)
    for layer in range(llama.n_layers):
        low, high = two_replicates(result.entropy[:, layer].double().numpy(), unit_draws, 0.5)
        assert entropy.loc[layer, "ci_low"] == pytest.approx(low, rel=1e-6)
        assert entropy.loc[layer, "ci_high"] == pytest.approx(high, rel=1e-6)


@pytest.fixture(scope="module")
def similarity(llama):
    # MIN_UNITS items at least: with fewer the intervals are not drawn.
    corpus = tlm.data.parallel(["en", "fr", "zh"]).head(12)
    return tlm.representation_similarity(llama, corpus, n_shuffles=2, progress=False)


def test_similarity_peak_measure_ci_n_boot_seed(similarity):
    from tl_multilingual.resample import draws, percentile_interval
    from tl_multilingual.stages.similarity import MEASURES

    m = MEASURES.index("non_translation")
    diff = (similarity.values[m] - similarity.null[m]).mean(1).numpy()  # [item, layer]
    layer = int(np.argmax(diff.mean(0)))
    peaks = np.argmax(diff[draws(similarity.n_items, 5, 3)].mean(1), axis=-1)
    low, high = percentile_interval(peaks.astype(float), 0.5)
    got = similarity.peak("non_translation", ci=0.5, n_boot=5, seed=3)
    assert got["measure"] == "non_translation" and got["layer"] == layer
    assert got["share"] == pytest.approx(np.mean(peaks == layer))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high))


@pytest.mark.parametrize("table", ["to_frame", "summary"])
def test_similarity_tables_ci_n_boot_seed(similarity, table):
    def run(**kw):
        return getattr(similarity, table)(n_boot=2, **kw)

    narrow, wide = run(ci=0.5, seed=3), run(ci=0.9, seed=3)
    for prefix in ("ci", "null", "excess"):
        low, high = ("ci_low", "ci_high") if prefix == "ci" else (f"{prefix}_low", f"{prefix}_high")
        assert_coverage_ratio(narrow, wide, low, high)
    # The seed draws the items: the same seed again gives the same interval, another does not.
    assert run(ci=0.5, seed=3).equals(narrow)
    assert not run(ci=0.5, seed=4)[["ci_low", "ci_high"]].equals(narrow[["ci_low", "ci_high"]])


# -- statistics, perplexity, the lens ----------------------------------------------------------


def test_collect_include_bos_counts_the_bos_token(llama, corpus):
    lengths = {lang: sum(len(ids) for ids in llama.tokenize([t.text for t in corpus[lang]]))
               for lang in corpus.languages}
    with_bos = tlm.collect_stats(llama, corpus, include_bos=True, progress=False)
    without = tlm.collect_stats(llama, corpus, progress=False)
    for k, lang in enumerate(corpus.languages):
        n_texts = len(corpus[lang])
        assert int(with_bos.tokens[k]) == lengths[lang]
        assert int(without.tokens[k]) == lengths[lang] - n_texts
    assert with_bos.include_bos and not without.include_bos


def test_collect_threshold_decides_what_is_active(llama, corpus):
    never = tlm.collect_stats(llama, corpus, threshold=1e9, progress=False)
    always = tlm.collect_stats(llama, corpus, threshold=-1e9, progress=False)
    assert never.threshold == 1e9 and int(never.active_counts.sum()) == 0
    assert torch.equal(always.active_counts, always.tokens.expand_as(always.active_counts))


def test_perplexity_per_text(llama, corpus):
    frame = tlm.perplexity(llama, corpus.select(["en", "fr"]), per_text=True)
    assert len(frame) == len(corpus["en"]) + len(corpus["fr"])
    for _, row in frame.iterrows():
        ids = llama.tokenize([corpus[row["language"]][int(row["text"])].text])[0]
        assert row["perplexity"] == pytest.approx(np.exp(own_nll(llama, ids) / (len(ids) - 1)),
                                                  rel=1e-5)


def test_lens_languages_choose_the_tracked_languages(llama):
    prompts = [tlm.LensPrompt(f'Deutsch: "{w["de"]}" - English: "', {"en": w["en"], "fr": w["fr"]})
               for w in WORDS]
    every = tlm.language_lens(llama, prompts, languages=["en", "fr"], progress=False)
    one = tlm.language_lens(llama, prompts, languages=["fr"], progress=False)
    assert one.languages == ("fr",) and every.languages == ("en", "fr")
    torch.testing.assert_close(one.probability[..., 0], every.probability[..., 1])


# -- stage effects, patching, Wang et al.'s experiments ------------------------------------------


@pytest.fixture(scope="module")
def deep():
    """A four-layer model (one layer per stage), its neurons and its stages."""
    lm = tlm.adapt(tiny.bridge("llama", n_layers=4))
    membership = torch.zeros(4, lm.d_mlp, 2, dtype=torch.bool)
    membership[:, :6, 0] = membership[:, 6:12, 1] = True
    neurons = tlm.LanguageNeurons(("en", "fr"), membership, membership.any(-1), None,
                                  method="reference")
    stage_map = tlm.StageMap.from_boundaries(4, (1, 2, 3), d_mlp=lm.d_mlp)
    texts = tlm.data.parallel(["en", "fr"]).head(10)
    return lm, neurons, stage_map, texts


def effects(deep, **kw):
    lm, neurons, stage_map, texts = deep
    options = dict(stages=["understanding"], controls=1, n_boot=2, progress=False) | kw
    return tlm.stage_effects(lm, neurons, stage_map, texts, **options).to_frame()


def test_stage_effects_ci_and_n_boot_set_the_intervals(deep):
    narrow, wide = effects(deep, ci=0.5, seed=3), effects(deep, ci=0.9, seed=3)
    for column in ("own", "over_control", "over_others"):
        assert_coverage_ratio(narrow, wide, f"{column}_ci_low", f"{column}_ci_high")


def test_stage_effects_languages_and_allow_mismatch(deep):
    lm, neurons, stage_map, texts = deep
    only_fr = effects(deep, languages=["fr"])
    assert set(only_fr["language"]) == {"fr"}
    row = only_fr.set_index("language").loc["fr"]
    understanding = stage_map.layers("understanding")
    assert row["n_neurons"] == neurons.specific("fr").restrict(understanding).count()
    foreign = tlm.LanguageNeurons(neurons.languages, neurons.membership, neurons.selected().tensor,
                                  None, method="reference",
                                  source={"model": FOREIGN | {"n_layers": 4}})
    with pytest.raises(tlm.IdentificationError, match="allow_mismatch=True"):
        effects((lm, foreign, stage_map, texts), languages=["fr"])
    got = effects((lm, foreign, stage_map, texts), languages=["fr"], allow_mismatch=True)
    assert got.equals(only_fr)


def test_patch_neurons_layers_controls_seed_and_allow_mismatch(llama):
    source = tlm.prompts.translation(WORDS, src="fr", tgt="en", shots=1)
    target = tlm.prompts.translation(WORDS, src="fr", tgt="de", shots=1)
    mask = tlm.NeuronMask.from_pairs([(0, 1), (0, 4), (1, 2), (1, 9)], llama.n_layers, llama.d_mlp)

    def run(m=mask, **kw):
        return tlm.patch_neurons(llama, source=source, target=target, mask=m, **kw)

    restricted = run(layers=[1], controls=0).to_frame()
    by_hand = run(mask.restrict([1]), controls=0).to_frame()
    assert restricted.equals(by_hand)
    assert not run(controls=0).to_frame().equals(by_hand)
    # The controls: as many as asked, drawn outside the mask with the seed.
    drawn = run(controls=2, seed=5).to_frame()
    for c, control in enumerate(mask.controls(2, seed=5)):
        alone = run(control, controls=0).to_frame()
        rows = drawn[drawn["condition"] == f"control_{c}"]
        assert len(rows) == len(alone[alone["condition"] == "patched"]) > 0
        patched = alone[alone["condition"] == "patched"]["probability"]
        np.testing.assert_allclose(rows["probability"].to_numpy(float), patched.to_numpy(float))
    foreign = tlm.NeuronMask(mask.tensor, model=FOREIGN)
    with pytest.raises(tlm.MaskError, match="allow_mismatch=True"):
        run(foreign, controls=0)
    accepted = run(foreign, controls=0, allow_mismatch=True).to_frame()
    assert accepted.equals(run(controls=0).to_frame())


@pytest.fixture(scope="module")
def wang():
    """The planted model (its shared neurons raise the answer) and ten parallel items."""
    toy = tlm.models.planted()
    lm = tlm.adapt(toy.model)
    records = [{"id": f"q{n}", "text": {"en": toy.texts["en"][i], "ru": toy.texts["ru"][i]},
                "answer": {"en": toy.answer, "ru": toy.answer}}
               for n, i in enumerate(range(30, 40))]
    chosen = tlm.ParallelItems.from_records(records)
    return lm, chosen, tlm.sharing(lm, chosen, progress=False)


def test_boost_experiment_ci_n_boot_and_allow_mismatch(wang):
    import dataclasses

    lm, chosen, classes = wang

    def run(sharing=classes, **kw):
        options = dict(sharing=sharing, factors=(2.0,), controls=1, n_boot=2, progress=False) | kw
        return boost_experiment(lm, chosen, **options)

    narrow, wide = run(ci=0.5, seed=3), run(ci=0.9, seed=3)
    assert_coverage_ratio(narrow, wide, "logprob_ci_low", "logprob_ci_high")
    foreign = dataclasses.replace(classes, model=FOREIGN | {"n_layers": lm.n_layers})
    with pytest.raises(tlm.TLMultilingualError, match="allow_mismatch=True"):
        run(foreign)
    assert run(foreign, allow_mismatch=True).equals(run())
    with pytest.raises(tlm.TLMultilingualError, match="allow_mismatch=True"):
        correct_vs_incorrect(lm, chosen, sharing=foreign)
    assert correct_vs_incorrect(lm, chosen, sharing=foreign, allow_mismatch=True).equals(
        correct_vs_incorrect(lm, chosen, sharing=classes))


# -- seeds and languages of the building blocks ------------------------------------------------


def test_corpus_split_seed_picks_the_held_out_texts():
    import random

    corpus = tlm.data.parallel(["en", "fr"]).head(10)
    kept, held = corpus.split(3, seed=11)
    chosen = sorted(random.Random(11).sample(range(10), 3))
    for lang in ("en", "fr"):
        assert [t.text for t in held[lang]] == [corpus[lang][i].text for i in chosen]
        assert len(kept[lang]) == 7


@pytest.mark.parametrize("kind", ["translation", "repetition", "cloze"])
def test_prompt_seed_picks_the_examples(kind):
    import random

    words = tlm.data.words(["en", "fr"])[:6]
    if kind == "translation":
        prompts = tlm.prompts.translation(words, src="fr", tgt="en", shots=2, seed=11)
    elif kind == "repetition":
        prompts = tlm.prompts.repetition(words, language="fr", shots=2, seed=11)
    else:
        prompts = tlm.prompts.cloze(words, language="en", shots=2, seed=11)
    rng = random.Random(11)
    key = "en" if kind == "cloze" else "fr"
    for i, prompt in enumerate(prompts):
        examples = rng.sample([w for j, w in enumerate(words) if j != i], 2)
        lines = prompt.text.split("\n")
        assert len(lines) == 3
        for line, example in zip(lines, examples):
            assert f'"{example[key]}"' in line


def test_random_masks_and_controls_follow_their_seed():
    def drawn(seed, per_layer, exclude=None):
        generator = torch.Generator().manual_seed(seed)
        grid = torch.zeros(len(per_layer), 16, dtype=torch.bool)
        for layer, count in enumerate(per_layer):
            pool = torch.arange(16)
            if exclude is not None:
                pool = pool[~exclude[layer]]
            grid[layer, pool[torch.randperm(len(pool), generator=generator)[:count]]] = True
        return grid

    mask = tlm.NeuronMask.random([2, 3], 16, seed=9)
    assert torch.equal(mask.tensor, drawn(9, [2, 3]))
    # Control i is drawn outside the mask with seed + 1 + i.
    for i, control in enumerate(mask.controls(2, seed=4)):
        assert torch.equal(control.tensor, drawn(4 + 1 + i, [2, 3], mask.tensor))


def test_tiny_models_follow_their_seed():
    ids = torch.tensor([[1, 40, 41, 42]])
    hf, _ = tlm.models.tiny_hf("llama", seed=3)
    with torch.no_grad():
        want = hf(ids).logits
        got = tlm.models.tiny("llama", seed=3)(ids)
        other = tlm.models.tiny("llama")(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(other, want, rtol=1e-3, atol=1e-3)
    first, _ = tlm.models.tiny_hf("llama")
    with torch.no_grad():
        assert not torch.allclose(first(ids).logits, want, rtol=1e-3, atol=1e-3)


def test_languages_of_the_bundled_words_and_of_items():
    words = tlm.data.words(["fr"])
    assert words and all(set(w) <= {"concept", "cloze_en", "fr"} and "fr" in w for w in words)
    assert all("en" not in w for w in words)
    chosen = tlm.ParallelItems.from_records(
        [{"id": "a", "text": {"en": "x", "fr": "y", "de": "z"}, "answer": {"en": "1", "fr": "2"}}],
        languages=["fr", "de"])
    assert chosen.languages == ("fr", "de")
    assert tlm.ParallelItems(list(chosen), languages=["de", "fr"]).languages == ("de", "fr")


def test_sharing_threshold_decides_what_is_active(wang):
    lm, chosen, _ = wang
    never = tlm.sharing(lm, chosen, threshold=1e9, progress=False)
    always = tlm.sharing(lm, chosen, threshold=-1e9, progress=False)
    assert never.threshold == 1e9 and int(never.codes.sum()) == 0
    full = (1 << len(chosen.languages)) - 1
    assert bool((always.codes == full).all())


def test_similarity_include_bos_pools_the_bos_position(llama):
    from test_similarity import brute_force_measures

    corpus = tlm.data.parallel(["en", "fr"]).head(6)
    vectors = np.zeros((6, 2, llama.n_layers, llama.d_model))
    for k, lang in enumerate(corpus.languages):
        for i, text in enumerate(corpus[lang]):
            seen = {}

            def keep(tensor, hook, seen=seen):
                seen[len(seen)] = tensor[0].detach().double()

            hooks = [(f"blocks.{layer}.hook_resid_post", keep) for layer in range(llama.n_layers)]
            with torch.no_grad(), llama.model.hooks(fwd_hooks=hooks):
                llama.model(torch.tensor([llama.tokenize([text.text])[0]]))
            for layer in range(llama.n_layers):
                vectors[i, k, layer] = seen[layer].mean(0).numpy()  # BOS included
    result = tlm.representation_similarity(llama, corpus, include_bos=True, n_shuffles=2,
                                           progress=False)
    assert result.include_bos
    np.testing.assert_allclose(result.values[0].numpy(),
                               brute_force_measures(vectors, list(range(6)))[0], atol=2e-5)


def test_register_selects_the_bundled_sentences():
    every = tlm.data.parallel_records()
    reasoning = [r for r in every if r["register"] == "reasoning"]
    assert 0 < len(reasoning) < len(every)
    assert tlm.data.parallel_records(register="reasoning") == reasoning
    corpus = tlm.data.parallel(["en", "fr"], register="reasoning")
    assert [t.text for t in corpus["fr"]] == [r["fr"] for r in reasoning]
    chosen = tlm.data.parallel_items(["en", "fr"], register="reasoning")
    assert len(list(chosen)) == len(reasoning)


def test_candidate_languages_of_the_default_identifier():
    require("lingua")
    german = "Die Katze schläft auf der warmen Matte, und wir gingen am Morgen zum Markt."
    assert tlm.language_of([german])["language"].tolist() == ["de"]
    # Among English and French only, German text cannot be read as German.
    assert tlm.language_of([german], languages=["en", "fr"])["language"].iloc[0] in {"en", "fr"}
    corpus = tlm.Corpus.from_dict({"en": ["The cat sleeps on the warm mat.", german],
                                   "de": [german, german]})
    _, dropped = tlm.purity_filter(corpus, keep_parallel=False)
    assert dropped[["language", "text"]].values.tolist() == [["en", 1]]
    # German is no candidate: every German text is read as another language and dropped.
    with pytest.raises(tlm.CorpusError, match=r"no text of \['de'\]"):
        tlm.purity_filter(corpus, languages=["en", "fr"], keep_parallel=False)


def test_boost_experiment_controls_and_seed_draw_each_items_controls(wang, monkeypatch):
    lm, chosen, classes = wang
    asked = []
    original = tlm.NeuronMask.controls

    def recording(self, n, *, seed=0):
        asked.append((n, seed))
        return original(self, n, seed=seed)

    monkeypatch.setattr(tlm.NeuronMask, "controls", recording)
    boost_experiment(lm, chosen, sharing=classes, factors=(2.0,), controls=2, seed=5, n_boot=2,
                     progress=False)
    # One block per item: item b's controls are drawn with seed + 97 * b.
    blocks = len(list(chosen))
    assert sorted(set(asked)) == [(2, 5 + 97 * b) for b in range(blocks)]


def test_stage_effects_controls_and_seed_draw_the_controls(deep, monkeypatch):
    asked = []
    original = tlm.NeuronMask.controls

    def recording(self, n, *, seed=0):
        asked.append((n, seed))
        return original(self, n, seed=seed)

    monkeypatch.setattr(tlm.NeuronMask, "controls", recording)
    effects(deep, controls=2, seed=5, languages=["fr"])
    # One block (the whole evaluation set): its controls are drawn with the seed itself.
    assert asked == [(2, 5)]
