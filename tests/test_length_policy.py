"""One length policy for every call that feeds text to the model.

On a tiny GPT-2 (``n_ctx`` 128, learned positions) a 700-token prompt used to raise a
bare ``IndexError`` from the position embedding everywhere but in statistics and
perplexity. Now every entry point takes ``max_length`` / ``overflow``: by default the
oldest tokens go (BOS stays first) with a ``TruncationWarning`` naming the limit, and
``overflow="error"`` raises a ``ContextLengthError`` naming it.
"""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.errors import ContextLengthError, TruncationWarning

LONG = " ".join(tiny.SAMPLE_TEXT["en"] * 16) + " The cat sleeps on the"
LONG_FR = " ".join(tiny.SAMPLE_TEXT["fr"] * 16) + " Le chat dort sur le"
LIMIT = "max_length=128"


@pytest.fixture(scope="module")
def gpt2():
    model = tiny.bridge("gpt2")
    lm = tlm.adapt(model)
    assert lm.n_ctx == 128 and len(lm.tokenize([LONG])[0]) > 600
    return model, lm


def cut(lm, ids, limit=128):
    """BOS and the last ``limit - 1`` tokens: what the model may read of a long prompt."""
    return ids[:1] + ids[len(ids) - (limit - 1) :]


def own_logp(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids]))[0, -1].double(), -1)


def items():
    return tlm.ParallelItems.from_records(
        [{"id": "a", "text": {"en": LONG, "fr": LONG_FR}, "answer": {"en": " mat", "fr": " tapis"}}]
    )


def test_the_warning_names_the_limit_and_points_at_the_caller(gpt2):
    _, lm = gpt2
    with pytest.warns(TruncationWarning, match=LIMIT) as caught:
        tlm.language_lens(lm, [tlm.LensPrompt(LONG, {"en": "mat"})])
    assert "n_ctx=128" in str(caught[0].message)
    assert caught[0].filename == __file__
    assert issubclass(ContextLengthError, tlm.CorpusError) and issubclass(ContextLengthError, tlm.TLMultilingualError)


def test_lens_reads_the_end_of_a_long_prompt(gpt2):
    model, lm = gpt2
    prompts = [tlm.LensPrompt(LONG, {"en": "mat"})]
    with pytest.warns(TruncationWarning, match=LIMIT):
        result = tlm.language_lens(lm, prompts)
    own = own_logp(model, cut(lm, lm.tokenize([LONG])[0]))
    ids = tlm.word_tokens(lm.tokenizer, "mat")
    assert result.probability[0, -1, 0].item() == pytest.approx(own[ids].exp().sum().item(), rel=1e-4)
    with pytest.warns(TruncationWarning, match="max_length=64"):
        shorter = tlm.language_lens(lm, prompts, max_length=64, overflow="truncate")
    own = own_logp(model, cut(lm, lm.tokenize([LONG])[0], 64))
    assert shorter.probability[0, -1, 0].item() == pytest.approx(own[ids].exp().sum().item(), rel=1e-4)
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.language_lens(lm, prompts, overflow="error")
    with pytest.raises(tlm.CorpusError, match="split"):
        tlm.language_lens(lm, prompts, overflow="split")


@pytest.mark.parametrize("method", ["contribution", "effective", "grad_x_act"])
def test_attribution_reads_the_end_of_a_long_prompt(gpt2, method):
    _, lm = gpt2
    with pytest.warns(TruncationWarning, match=LIMIT):
        attr = tlm.attribute(lm, items(), method=method, progress=False)
    assert torch.isfinite(attr.scores).all()
    if method == "contribution":
        values = tlm.record(lm, lm.pad([cut(lm, lm.tokenize([LONG])[0])]))[0, -1]
        for layer in range(lm.n_layers):
            norms = lm.model.blocks[layer].mlp.W_out.detach().norm(dim=-1)
            torch.testing.assert_close(attr.scores[0, 0, layer], values[layer].abs() * norms)
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.attribute(lm, items(), method=method, progress=False, overflow="error")


def test_generation_slides_over_the_last_tokens(gpt2):
    model, lm = gpt2
    with pytest.warns(TruncationWarning, match=LIMIT):
        out = tlm.generate(lm, [LONG, "The cat"], max_new_tokens=3, stop=())
    ids = lm.tokenize([LONG])[0]
    new = []
    for _ in range(3):
        new.append(int(own_logp(model, cut(lm, ids + new)).argmax()))
    assert out[0] == lm.tokenizer.decode(new, skip_special_tokens=True)
    assert out[1] == tlm.generate(lm, ["The cat"], max_new_tokens=3, stop=())[0]
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.generate(lm, [LONG], max_new_tokens=3, overflow="error")
    prompt = lm.tokenize(["The cat"])[0]
    with pytest.raises(ContextLengthError, match="max_new_tokens"):  # prompt + new tokens must fit
        tlm.generate(lm, ["The cat"], max_new_tokens=128 - len(prompt) + 1, overflow="error")
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.answer_accuracy(lm, {"en": [(LONG, "x")]}, checker=lambda text, gold: False, overflow="error")


def test_choice_scores_keep_the_options_and_the_end_of_the_prompt(gpt2):
    model, lm = gpt2
    entries = {"en": [tlm.MultipleChoice(LONG, (" mat", " market"), 0)]}
    with pytest.warns(TruncationWarning, match=LIMIT):
        frame = tlm.evaluate.choice_scores(lm, entries)
    expected = []
    for option in (" mat", " market"):
        prompt = lm.tokenize([LONG])[0]
        ids = lm.tokenize([LONG + option])[0]
        kept = cut(lm, ids)
        start = len(prompt) - (len(ids) - len(kept))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([kept]))[0].double(), -1)
        expected.append(sum(float(logp[p - 1, kept[p]]) for p in range(start, len(kept))))
    assert frame.iloc[0]["scores"] == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.choice_accuracy(lm, entries, overflow="error")
    with pytest.raises(ContextLengthError, match="no room"):  # an option longer than the context
        tlm.evaluate.choice_scores(lm, {"en": [tlm.MultipleChoice("The cat", (LONG, " mat"), 0)]})


def test_paper_b_experiments_take_the_policy(gpt2):
    _, lm = gpt2
    with pytest.warns(TruncationWarning, match=LIMIT):
        table = tlm.sharing_experiments.item_correctness(lm, items())
    assert table["logprob"].notna().all()
    with pytest.warns(TruncationWarning, match=LIMIT):
        shared = tlm.sharing(lm, items(), progress=False)
    assert shared.codes.shape[0] == 1
    for call in (tlm.sharing_experiments.item_correctness, tlm.sharing, tlm.sharing_experiments.correct_vs_incorrect, tlm.sharing_experiments.boost_experiment):
        with pytest.raises(ContextLengthError, match=LIMIT):
            call(lm, items(), overflow="error")


def test_item_activations_read_the_end_of_a_long_text(gpt2):
    _, lm = gpt2
    from tl_multilingual.neurons.sharing_classes import item_activations

    with pytest.warns(TruncationWarning, match=LIMIT):
        values = item_activations(lm, [LONG])
    expected = tlm.record(lm, lm.pad([cut(lm, lm.tokenize([LONG])[0])]))[0, -1]  # GPT-2: read hook = write hook
    torch.testing.assert_close(values[0], expected.float())


def test_patching_reads_the_end_of_long_prompts(gpt2):
    _, lm = gpt2
    source = [tlm.LensPrompt(LONG_FR, {"en": "mat"})]
    target = [tlm.LensPrompt(LONG, {"en": "mat"})]
    mask = tlm.NeuronMask.random([4, 4], lm.d_mlp, seed=0)
    with pytest.warns(TruncationWarning, match=LIMIT):
        result = tlm.patch_neurons(lm, source=source, target=target, mask=mask, controls=1)
    with pytest.warns(TruncationWarning):
        clean = tlm.language_lens(lm, target).probability
    torch.testing.assert_close(result.probability[0], clean)
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.patch_neurons(lm, source=source, target=target, mask=mask, overflow="error")


def test_perplexity_truncates_splits_or_refuses(gpt2):
    _, lm = gpt2
    corpus = tlm.Corpus.from_dict({"en": [LONG]})
    n_ids = len(lm.tokenize([LONG])[0])
    with pytest.warns(TruncationWarning, match="truncated"):
        assert tlm.perplexity(lm, corpus).iloc[0]["tokens"] == 127
    with pytest.warns(TruncationWarning, match="split"):
        split = tlm.perplexity(lm, corpus, overflow="split").iloc[0]
    assert split["tokens"] == n_ids - 1  # every text token: each piece starts with BOS
    with pytest.raises(ContextLengthError, match=LIMIT):
        tlm.perplexity(lm, corpus, overflow="error")
