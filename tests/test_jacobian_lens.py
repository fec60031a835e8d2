"""TransformerLens's Jacobian lens as a choice of ``language_lens``: the identity lens is
the logit lens, a lens fitted by TransformerLens reads like TransformerLens's own readout
and its last layer is the model's output, the languages it was fitted on are recorded and
warned about, save/load keep the record, and a TransformerLens without it is refused."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

import tl_multilingual as tlm
from tl_multilingual.stages.lens import LensResult, fit_jacobian_lens, language_lens, lens_record

WORDS = [
    {"en": "cat", "fr": "chat", "de": "Katze"},
    {"en": "market", "fr": "marché", "de": "Markt"},
    {"en": "morning", "fr": "matin", "de": "Morgen"},
    {"en": "mat", "fr": "tapis", "de": "Matte"},
]
try:
    from transformer_lens.tools.analysis import JacobianLens
except ImportError:  # TransformerLens before 3.9: only the refusal is tested
    JacobianLens = None
try:
    from transformer_lens import HookedTransformer  # noqa: F401

    LEGACY = True
except ImportError:  # TransformerLens 4 removed it
    LEGACY = False
needs_lens = pytest.mark.skipif(
    JacobianLens is None, reason="this TransformerLens has no JacobianLens"
)


@pytest.fixture(scope="module")
def model():
    return tlm.models.tiny("llama", n_layers=4)


@pytest.fixture(scope="module")
def fitted(model):
    corpus = tlm.Corpus.from_dict({lang: tlm.models.SAMPLE_TEXT[lang] for lang in ("en", "fr")})
    return fit_jacobian_lens(model, corpus, skip_first_positions=2)


def no_lens_warnings(record):
    return [str(w.message) for w in record if "Jacobian lens" in str(w.message)]


@needs_lens
def test_an_identity_jacobian_lens_is_exactly_the_logit_lens(model):
    lm = tlm.adapt(model)
    identity = JacobianLens(
        {layer: torch.eye(lm.d_model) for layer in range(lm.n_layers - 1)},
        n_prompts=1,
        d_model=lm.d_model,
    )
    prompts = tlm.prompts.translation(WORDS, src="fr", tgt="de", shots=1)
    logit = language_lens(lm, prompts, batch_size=3)
    jacobian = language_lens(
        lm, prompts, lens=identity, lens_languages=["de", "en", "fr"], batch_size=3
    )
    for name in ("probability", "rank", "entropy", "top_token"):
        assert torch.equal(getattr(jacobian, name), getattr(logit, name)), name
    assert logit.lens == {"kind": "logit"}
    assert jacobian.lens["kind"] == "jacobian" and jacobian.lens["languages"] == ["de", "en", "fr"]
    assert jacobian.lens["source_layers"] == [0, 1, 2] and jacobian.lens["n_prompts"] == 1


@needs_lens
def test_a_fitted_lens_reads_like_transformerlens_and_ends_with_the_models_output(model, fitted):
    """Every layer equals TransformerLens's own ``JacobianLens.readout`` (its transport,
    final norm and unembedding) at the last position; the last layer is the model's own
    next-token distribution."""
    lm = tlm.adapt(model)
    assert fitted.source_layers == [0, 1, 2] and fitted.n_prompts == 6
    assert fitted.metadata["tl_multilingual"]["languages"] == ["en", "fr"]
    assert fitted.metadata["tl_multilingual"]["texts"] == {"en": 3, "fr": 3}
    prompts = tlm.prompts.translation(WORDS, src="en", tgt="fr", shots=1)
    result = language_lens(lm, prompts, lens=fitted, batch_size=2)
    logit = language_lens(lm, prompts, batch_size=2)
    assert not torch.allclose(
        result.probability[:, 0], logit.probability[:, 0]
    )  # the transport does something
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([lm.tokenize([prompt.text])[0]])
        theirs = fitted.readout(model, ids, positions=[-1], return_full_logits=True)
        with torch.no_grad():
            own = torch.log_softmax(model(ids)[0, -1].float(), -1)
        for layer in range(lm.n_layers):
            logp = torch.log_softmax(theirs.lens_logits[layer][0].float(), -1)
            if layer == lm.n_layers - 1:
                torch.testing.assert_close(logp, own, atol=1e-5, rtol=1e-5)
            for k, lang in enumerate(result.languages):
                word = tlm.word_tokens(lm.tokenizer, prompt.answers[lang])
                assert result.probability[i, layer, k].item() == pytest.approx(
                    logp[word].exp().sum().item(), rel=1e-4, abs=1e-7
                )
                assert result.rank[i, layer, k].item() == (logp > logp[word].max()).sum().item() + 1
            assert result.entropy[i, layer].item() == pytest.approx(
                -(logp.exp() * logp).sum().item(), rel=1e-4
            )
        word = tlm.word_tokens(lm.tokenizer, prompt.answers["fr"])
        assert result.probability[i, -1, 0].item() == pytest.approx(
            own[word].exp().sum().item(), rel=1e-5
        )


@needs_lens
def test_the_missing_language_warning_fires_when_it_should_and_not_otherwise(model, fitted):
    lm = tlm.adapt(model)
    covered = tlm.prompts.translation(
        WORDS, src="de", tgt="fr", shots=1
    )  # reads fr and en: both fitted
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        language_lens(lm, covered, lens=fitted)
    assert no_lens_warnings(record) == []
    german = tlm.prompts.translation(WORDS, src="fr", tgt="de", shots=1)  # reads de and en
    with pytest.warns(
        tlm.TLMultilingualWarning, match=r"fitted on text in \['en', 'fr'\], not in \['de'\]"
    ):
        result = language_lens(lm, german, lens=fitted)
    assert result.lens["languages"] == ["en", "fr"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        language_lens(lm, german, lens=fitted, languages=["en"])
    assert no_lens_warnings(record) == []
    with warnings.catch_warnings(record=True) as record:  # the logit lens has no fit languages
        warnings.simplefilter("always")
        language_lens(lm, german)
    assert no_lens_warnings(record) == []


@needs_lens
def test_a_loaded_lens_takes_its_languages_from_the_user_or_says_they_are_unknown(
    model, fitted, tmp_path
):
    lm = tlm.adapt(model)
    prompts = tlm.prompts.translation(WORDS, src="de", tgt="fr", shots=1)
    fitted.save(str(tmp_path / "lens.pt"))
    again = JacobianLens.load(str(tmp_path / "lens.pt"))  # TransformerLens keeps the record
    assert lens_record(again)["languages"] == ["en", "fr"]
    published = JacobianLens(
        dict(fitted.jacobians), n_prompts=fitted.n_prompts, d_model=fitted.d_model
    )
    with pytest.warns(
        tlm.TLMultilingualWarning,
        match="languages of the text this Jacobian lens was fitted on are unknown",
    ):
        unknown = language_lens(lm, prompts, lens=published)
    assert unknown.lens["languages"] is None
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        given = language_lens(lm, prompts, lens=published, lens_languages=["French", "eng_Latn"])
    assert no_lens_warnings(record) == []
    assert given.lens["languages"] == ["fr", "en"]
    assert torch.equal(given.probability, unknown.probability)
    with pytest.raises(
        tlm.TLMultilingualError, match=r"fitted on \['en', 'fr'\], but lens_languages=\['de'\]"
    ):
        language_lens(lm, prompts, lens=fitted, lens_languages=["de"])
    with pytest.raises(tlm.TLMultilingualError, match="the logit lens has none"):
        language_lens(lm, prompts, lens_languages=["en"])


@needs_lens
def test_save_and_load_keep_the_lens_record(model, fitted, tmp_path):
    lm = tlm.adapt(model)
    result = language_lens(
        lm, tlm.prompts.translation(WORDS, src="de", tgt="fr", shots=1), lens=fitted
    )
    result.save(tmp_path / "lens")
    loaded = LensResult.load(tmp_path / "lens")
    assert loaded.lens == result.lens and loaded.lens["corpus"].startswith("tl_multilingual corpus")
    assert torch.equal(loaded.probability, result.probability)
    assert loaded.select([1, 0]).lens == result.lens
    assert "lens='jacobian'" in repr(loaded)


@needs_lens
def test_bad_lenses_are_refused(model, fitted):
    lm = tlm.adapt(model)
    prompts = tlm.prompts.repetition(WORDS, language="fr", shots=1)
    with pytest.raises(tlm.TLMultilingualError, match="pass 'logit'"):
        language_lens(lm, prompts, lens="tuned")
    with pytest.raises(tlm.TLMultilingualError, match="must be 'logit' or a transformer_lens"):
        language_lens(lm, prompts, lens=torch.eye(3))
    partial = JacobianLens({0: torch.eye(lm.d_model)}, n_prompts=1, d_model=lm.d_model)
    with pytest.raises(tlm.TLMultilingualError, match=r"no transport for layers \[1, 2\]"):
        language_lens(lm, prompts, lens=partial, lens_languages=["fr"])
    other = tlm.adapt(tlm.models.tiny("gpt2", n_layers=4))
    with pytest.raises(
        tlm.UnsupportedModelError, match="TransformerLens refuses this Jacobian lens"
    ):
        language_lens(other, prompts, lens=fitted)
    short = tlm.Corpus.from_dict(
        {"en": ["ok", "The cat sleeps on the warm mat."], "fr": ["Oui."]}
    )  # 3, 13, 5 tokens
    with pytest.warns(
        tlm.TLMultilingualWarning, match="1 of 2 texts of 'en' are shorter than 8 tokens"
    ):
        with pytest.raises(tlm.CorpusError, match="no text of 'fr' has the 8 tokens"):
            fit_jacobian_lens(lm, short, skip_first_positions=6)


@needs_lens
@pytest.mark.skipif(not LEGACY, reason="HookedTransformer exists only in TransformerLens 3.x")
def test_a_legacy_hookedtransformer_is_refused_by_transformerlens():
    import tiny

    hooked, _ = tiny.hooked_and_bridge("llama")
    lm = tlm.adapt(hooked)
    identity = JacobianLens({0: torch.eye(lm.d_model)}, n_prompts=1, d_model=lm.d_model)
    prompts = tlm.prompts.repetition(WORDS, language="fr", shots=1)
    with pytest.raises(tlm.UnsupportedModelError, match="supports TransformerBridge only") as err:
        language_lens(lm, prompts, lens=identity, lens_languages=["fr"])
    assert isinstance(err.value.__cause__, TypeError)
    corpus = tlm.Corpus.from_dict({"en": ["The cat sleeps on the warm mat."]})
    with pytest.raises(tlm.UnsupportedModelError, match="refuses to fit a Jacobian lens"):
        fit_jacobian_lens(lm, corpus, skip_first_positions=2)


def test_a_transformerlens_without_the_jacobian_lens_is_refused_by_name(model, monkeypatch):
    """TransformerLens releases before 3.9 have no ``tools.analysis.JacobianLens``: the
    option then raises the library's error naming the release needed; the logit lens
    still works."""
    lm = tlm.adapt(model)
    prompts = tlm.prompts.repetition(WORDS, language="fr", shots=1)
    monkeypatch.setitem(sys.modules, "transformer_lens.tools.analysis", None)
    with pytest.raises(
        tlm.UnsupportedModelError, match=r"needs TransformerLens 3\.9 or later"
    ) as err:
        language_lens(lm, prompts, lens=object())
    assert "transformer-lens>=3.9" in str(err.value) and isinstance(
        err.value.__cause__, ImportError
    )
    with pytest.raises(tlm.UnsupportedModelError, match=r"needs TransformerLens 3\.9 or later"):
        fit_jacobian_lens(lm, tlm.Corpus.from_dict({"en": ["The cat sleeps on the warm mat."]}))
    assert language_lens(lm, prompts).lens == {"kind": "logit"}
