"""The readout invariant: the library's head equals the model's own output, for every
accepted architecture, and a head it cannot reproduce is refused."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.errors import UnsupportedModelError
from tl_multilingual.model import readout

ACCEPTED = [arch for arch in tlm.models.TINY_ARCHITECTURES if arch != "mixtral"]  # mixture-of-experts is refused
TEXTS = ["The cat sat on the mat.", "A dog ran to the market this morning."]


@pytest.mark.parametrize("arch", ACCEPTED)
def test_last_lens_layer_and_perplexity_equal_the_models_own_logits(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    sequences = lm.tokenize(TEXTS)
    batch = lm.pad(sequences, side="left")
    with torch.no_grad():
        own = model(batch.input_ids, attention_mask=batch.attention_mask).float()
    logp = readout.layer_logprobs(lm, batch)
    torch.testing.assert_close(logp[:, -1], torch.log_softmax(own[:, -1], -1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(readout.last_logits(lm, batch).float(), own[:, -1], atol=1e-4, rtol=1e-4)
    # Perplexity of each text, by hand from the model's own logits on the unpadded text.
    expected = []
    for seq in sequences:
        ids = torch.tensor([seq])
        with torch.no_grad():
            logits = model(ids).float()[0]
        nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum")
        expected.append(float(torch.exp(nll / (len(seq) - 1))))
    frame = tlm.perplexity(lm, tlm.Corpus.from_dict({"en": TEXTS}), per_text=True)
    assert frame["perplexity"].tolist() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("arch", ["cohere", "granite"])
def test_scaled_heads_change_the_numbers(arch):
    """The final-logit transform is not a no-op on these families: dropping it moves the
    readout away from the model's own logits (so the test above checks the transform)."""
    lm = tlm.adapt(tiny.bridge(arch))
    batch = lm.pad(lm.tokenize(TEXTS[:1]))
    with torch.no_grad():
        own = lm.call(batch)[0, -1].float()
    fin = {}
    lm.forward(batch, fwd_hooks=[(lm.final_hook, lambda t, hook: fin.setdefault("r", t))], logits=False,
               stop_at=lm.final_hook)
    bare = lm.model.unembed(lm.model.ln_final(fin["r"]))[0, -1].float()
    assert (bare - own).abs().max() > 0.1


def test_a_head_the_library_cannot_reproduce_is_refused(monkeypatch):
    monkeypatch.setattr(readout, "_final_transform", lambda model: (lambda logits: logits))
    lm = tlm.adapt(tiny.bridge("cohere"))
    with pytest.raises(UnsupportedModelError, match="output head"):
        tlm.perplexity(lm, tlm.Corpus.from_dict({"en": TEXTS}))
    with pytest.raises(UnsupportedModelError, match="output head"):
        tlm.language_lens(lm, tlm.prompts.translation([{"en": "cat", "fr": "chat"}, {"en": "dog", "fr": "chien"}],
                                                      src="fr", tgt="en", shots=1))
    # Statistics never use the head: the model can still be studied there.
    stats = tlm.collect_stats(lm, tlm.Corpus.from_dict({"en": TEXTS, "fr": ["Le chat dort."]}))
    assert int(stats.tokens.sum()) > 0


def test_config_transform_matches_the_declared_one():
    """TransformerLens 3.x has no declared transform: the configuration fallback gives
    the same logits as the declared one on every scaled family."""
    for arch in ("cohere", "cohere2", "granite", "gemma2"):
        model = tiny.bridge(arch)
        logits = torch.randn(3, 7) * 10
        declared = model.adapter.apply_output_logits_transform(logits)
        torch.testing.assert_close(readout._config_transform(model)(logits), declared)


def test_the_checked_head_is_kept_by_the_readout_once_per_adapter():
    from tl_multilingual.model import readout

    lm = tlm.adapt(tiny.bridge("gpt2"))
    first = readout.head(lm)
    assert readout.head(lm) is first  # built and checked once
    assert not any(callable(v) and v is first for v in vars(lm).values())  # not written into the adapter


# -- the scoring head: vocabulary chunks, half-precision copies ------------------------------


def _hooks(model) -> int:
    roots = [model, model.original_model]
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks)
               for r in roots for m in r.modules())


def _by_hand(model, sequences, linear=None):
    """Summed NLL (float64) and greedy flags of each whole sequence from the Hugging Face
    model's own logits; ``linear`` replaces every linear layer's map when given."""
    hf = model.original_model
    patched = []
    if linear is not None:
        for module in hf.modules():
            if type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D":
                module.forward = linear(module)
                patched.append(module)
    try:
        sums, greedy = [], []
        for seq in sequences:
            ids = torch.tensor([seq])
            with torch.no_grad():
                logits = hf(ids).logits[0, :-1].double()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            sums.append(float(nll))
            greedy.append(bool((logits.argmax(-1) == ids[0, 1:]).all()))
        return sums, greedy
    finally:
        for module in patched:
            del module.forward


def _encoded(lm, texts):
    """Token ids of each text, and the same as sequences whose every predicted position
    counts."""
    from tl_multilingual.model.tokens import Encoded

    ids = lm.tokenize(texts)
    return ids, [Encoded(tuple(seq), 1, len(seq), i) for i, seq in enumerate(ids)]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "cohere"])
def test_scoring_in_vocabulary_chunks_equals_the_whole_head(arch, monkeypatch):
    """The log-sum-exp of the chunks' log-sum-exps equals the one over the whole
    vocabulary: with 7-entry chunks (the last one shorter) the summed NLL equals the
    model's own float64 cross-entropy within 1e-5 relative (float32 logits; the
    combination adds a few float32 roundings per token), and so do the greedy flags."""
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    texts = TEXTS + ["Le chat dort sur le tapis chaud."]
    sequences, encoded = _encoded(lm, texts)
    assert lm.model.cfg.d_vocab % 7 != 0
    expected, greedy = _by_hand(model, sequences)
    whole, _, whole_greedy = readout.sequence_scores(lm, encoded, batch_size=2)
    monkeypatch.setattr(readout, "VOCAB_CHUNK", 7)
    chunked, counts, chunked_greedy = readout.sequence_scores(lm, encoded, batch_size=2)
    assert counts == [len(s) - 1 for s in sequences]
    assert chunked == pytest.approx(expected, rel=1e-5)
    assert chunked == pytest.approx(whole, rel=1e-6, abs=1e-5)
    assert chunked_greedy == whole_greedy == greedy


def test_greedy_ties_across_vocabulary_chunks_go_to_the_lowest_token(monkeypatch):
    """Token 1 and token 9 have the same unembedding row, in different chunks: the
    argmax of the whole logits is 1, and so is the chunked one."""
    weight = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    weight[9] = weight[1] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    pieces = readout._Pieces(lambda x: x, weight, None, lambda x: x)
    rows = torch.ones(2, 4)
    monkeypatch.setattr(readout, "VOCAB_CHUNK", 5)
    nll, hits = readout._head_nll(pieces, rows, torch.tensor([1, 9]), greedy=True)
    logits = rows @ weight.T
    assert hits.tolist() == [True, False] == (logits.argmax(-1) == torch.tensor([1, 9])).tolist()
    torch.testing.assert_close(nll, torch.logsumexp(logits, -1) - logits[:, 1])


def _linear_layers_run(lm, encoded):
    """The linear layers that a float32 scoring pass calls (forward hooks, removed)."""
    model = lm.model
    layers = {id(m): m for r in (model, model.original_model) for m in r.modules()
              if type(m) is torch.nn.Linear or type(m).__name__ == "Conv1D"}
    ran = {}
    handles = [m.register_forward_hook(lambda m, i, o: ran.update({id(m): m}))
               for m in layers.values()]
    try:
        readout.sequence_nll(lm, encoded, batch_size=1)
    finally:
        for handle in handles:
            handle.remove()
    return list(ran.values())


def _half_linear(module):
    """A linear map with input, weight, bias and output rounded to bfloat16, accumulated
    in float32: what a bfloat16 matrix multiplication computes."""
    weight = module.weight.detach()
    weight = weight if type(module) is torch.nn.Linear else weight.T
    half = lambda t: None if t is None else t.bfloat16().float()  # noqa: E731
    return lambda x: half(torch.nn.functional.linear(half(x), half(weight), half(module.bias)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compute_dtype_on_a_cpu_casts_the_linear_weights_once(arch, monkeypatch):
    """The body's linear layers in bfloat16: every linear layer of the Hugging Face
    model but the unembedding is cast once per call and runs in every pass; the NLL is
    within 1e-3 relative of a pass of the Hugging Face model whose every linear map
    rounds its input, weights and output to bfloat16 (the same roundings; an output
    rounded the other way after a different accumulation order moves the rest of the
    pass), within 2% of float32 (bfloat16 keeps 8 significant bits, 0.4% per rounding),
    and the model's weights, forwards and hooks are as they were."""
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    sequences, encoded = _encoded(lm, TEXTS)
    before = {k: v.clone() for k, v in model.original_model.state_dict().items()}
    hooks = _hooks(model)  # the bridge's own
    exact, _ = readout.sequence_nll(lm, encoded, batch_size=1)
    casts, calls = [], []
    real = readout._cast_forward

    def counted(module, dtype):
        casts.append(module)
        forward = real(module, dtype)
        return lambda x: calls.append(module) or forward(x)

    monkeypatch.setattr(readout, "_cast_forward", counted)
    slow = not readout._native_half(torch.bfloat16)
    warned = pytest.warns(tlm.errors.TLMultilingualWarning, match="no native")
    with warned if slow else contextlib.nullcontext():
        readout._SLOW_WARNED.clear()
        half, _ = readout.sequence_nll(lm, encoded, batch_size=1, compute_dtype=torch.bfloat16)
    assert len(casts) == len({id(m) for m in casts})  # once per call, not per batch
    assert {id(m) for m in _linear_layers_run(lm, encoded)} == {id(m) for m in calls}
    emulated, _ = _by_hand(model, sequences, _half_linear)
    assert half == pytest.approx(emulated, rel=1e-3)
    assert half != pytest.approx(exact, rel=1e-6)  # the body did run in bfloat16
    assert half == pytest.approx(exact, rel=2e-2)
    after = model.original_model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype
               for k in before)
    assert not any("forward" in vars(m) for r in (model, model.original_model) for m in r.modules())
    assert _hooks(model) == hooks


def test_compute_dtype_restores_the_forwards_when_a_pass_fails(monkeypatch):
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    _, encoded = _encoded(lm, TEXTS)
    readout.head(lm)

    def fail(*args, **kwargs):
        # cast during the pass
        assert any("forward" in vars(m) for m in model.original_model.modules())
        raise RuntimeError("boom")

    monkeypatch.setattr(lm, "forward", fail)
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        readout.sequence_nll(lm, encoded, batch_size=2, compute_dtype=torch.bfloat16)
    assert not any("forward" in vars(m) for r in (model, model.original_model) for m in r.modules())


def test_head_dtype_runs_the_unembedding_on_a_copy_cast_once(monkeypatch):
    """``head_dtype``: the NLL equals the final norm in float32 then the unembedding of
    bfloat16 copies (1e-4 relative: the same product, accumulation order aside), is
    within 1% of float32, and the model's unembedding is still float32 afterwards."""
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    sequences, encoded = _encoded(lm, TEXTS)
    exact, _ = readout.sequence_nll(lm, encoded, batch_size=2)
    casts = []
    real_cast = readout._Pieces.cast
    monkeypatch.setattr(readout._Pieces, "cast",
                        lambda self, dtype: casts.append(dtype) or real_cast(self, dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half, _ = readout.sequence_nll(lm, encoded, batch_size=1, head_dtype=torch.bfloat16)
    assert casts == [torch.bfloat16]  # once for the call, not per batch
    expected = []
    for seq in sequences:
        ids = torch.tensor([seq])
        with torch.no_grad():
            final = model.original_model.model(ids).last_hidden_state[0, :-1]
            logits = (final.bfloat16() @ model.original_model.lm_head.weight.bfloat16().T).double()
        nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
        expected.append(float(nll))
    assert half == pytest.approx(expected, rel=1e-4)
    assert half == pytest.approx(exact, rel=1e-2)
    assert model.original_model.lm_head.weight.dtype == torch.float32


def test_half_dtypes_other_than_bf16_and_fp16_are_refused():
    lm = tlm.adapt(tiny.bridge("llama"))
    _, encoded = _encoded(lm, TEXTS)
    for name in ("compute_dtype", "head_dtype"):
        with pytest.raises(tlm.errors.TLMultilingualError, match=name):
            readout.sequence_nll(lm, encoded, batch_size=2, **{name: torch.float64})
