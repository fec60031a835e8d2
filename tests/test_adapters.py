"""Adapters: the facts they report, and clear refusals of unsupported models."""

from __future__ import annotations

import warnings

import pytest
import tiny
import torch
import transformers as T
from torch import Tensor

import tl_multilingual as tlm
from tl_multilingual.stages.similarity import representation_similarity


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3", "qwen3"])
def test_adapter_facts_and_hooks(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    assert lm.kind == "bridge"
    assert lm.n_layers == 2 and lm.d_model == 32
    assert lm.read_hook(1) == ("blocks.1.mlp.hook_pre" if lm.gated else "blocks.1.mlp.hook_post")
    assert lm.write_hook(0) == "blocks.0.mlp.hook_post"
    assert tlm.adapt(lm) is lm
    assert not model.training
    facts = lm.describe()
    assert facts["d_mlp"] == lm.d_mlp
    assert facts["architecture"] == type(model.original_model).__name__


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tokenize_matches_transformer_lens(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    for text in tiny.SAMPLE_TEXT["fr"]:
        assert lm.tokenize([text])[0] == model.to_tokens(text)[0].tolist()


def test_gated_neurons_are_the_activated_gate():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    pre = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(lm.neuron_values(0, pre), torch.nn.functional.silu(pre))


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_puts_real_tokens_on_the_chosen_side(side):
    lm = tlm.adapt(tiny.bridge("llama"), padding_side=side)
    batch = lm.pad([[1, 5, 6], [1, 7]])
    assert batch.attention_mask.tolist() == ([[1, 1, 1], [1, 1, 0]] if side == "right" else [[1, 1, 1], [0, 1, 1]])
    assert batch.padding_side == side


def test_logits_are_skipped_when_not_needed():
    lm = tlm.adapt(tiny.bridge("gemma3"))
    seen = []
    batch = lm.pad(lm.tokenize(["hello world"]))
    out = lm.forward(batch, fwd_hooks=[("ln_final.hook_normalized", lambda t, hook: seen.append(1))], logits=False)
    assert out is None and seen == []
    logits = lm.forward(batch)
    with torch.no_grad():
        own = lm.model(batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(logits, own)


def test_mixture_of_experts_is_refused():
    with pytest.raises(tlm.UnsupportedModelError, match="mixture-of-experts"):
        tlm.adapt(tiny.bridge("mixtral"))


def test_encoder_only_is_refused():
    from transformer_lens.model_bridge import TransformerBridge

    tok = tiny.tokenizer()
    config = T.BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    config.architectures = ["BertForMaskedLM"]
    bert = TransformerBridge.boot_transformers("tiny-bert", hf_model=T.BertForMaskedLM(config), tokenizer=tok)
    with pytest.raises(tlm.UnsupportedModelError, match="encoder"):
        tlm.adapt(bert)


def test_other_objects_are_refused_with_a_pointer():
    model, _ = tiny.hf_model("llama")
    with pytest.raises(tlm.UnsupportedModelError, match="boot_transformers"):
        tlm.adapt(model)
    with pytest.raises(tlm.TLMultilingualError):
        tlm.adapt(tiny.bridge("llama"), padding_side="middle")


# -- eval mode on every pass ------------------------------------------------------------

_PAIRS = [{"id": str(i), "text": {"en": en, "fr": fr}, "answer": {"en": " mat", "fr": " tapis"}}
          for i, (en, fr) in enumerate([("The cat sleeps on the", "Le chat dort sur le"),
                                        ("We walked to the", "Nous avons marché au")])]


def _measurements(lm):
    """One result of each entry point that runs the model, as tensors."""
    corpus = tlm.Corpus.from_dict({k: tiny.SAMPLE_TEXT[k] for k in ("en", "fr", "zh")})
    stats = tlm.collect_stats(lm, corpus, batch_size=2, progress=False)
    words = [{"en": "cat", "fr": "chat", "de": "Katze"}, {"en": "mat", "fr": "tapis", "de": "Matte"},
             {"en": "market", "fr": "marché", "de": "Markt"}]
    prompts = tlm.prompts.translation(words, src="fr", tgt="en", shots=1)
    mask = tlm.NeuronMask.from_pairs([(1, 0), (1, 5), (0, 3)], lm.n_layers, lm.d_mlp)
    batch = lm.pad(lm.tokenize(tiny.SAMPLE_TEXT["en"]))
    out = {
        "active": stats.active_counts.double(),
        "sums": stats.sums,
        "perplexity": torch.tensor(tlm.perplexity(lm, corpus, batch_size=2)["perplexity"].tolist()),
        "lens": tlm.language_lens(lm, prompts).probability,
        "record": tlm.record(lm, batch),
        "attribution": tlm.attribute(lm, tlm.ParallelItems.from_records(_PAIRS),
                                     method="grad_x_act", progress=False).scores,
    }
    with warnings.catch_warnings():  # three parallel items: few for intervals, enough here
        warnings.simplefilter("ignore", tlm.TLMultilingualWarning)
        out["similarity"] = representation_similarity(lm, corpus, n_shuffles=2).values
    targets = tlm.prompts.translation(words, src="fr", tgt="de", shots=1)
    out["patching"] = tlm.patch_neurons(lm, source=prompts, target=targets, mask=mask,
                                        controls=1).probability
    with tlm.ablate(lm, mask) + tlm.boost(lm, mask, factor=3.0, positions=[-1]):
        ablated = tlm.perplexity(lm, corpus, batch_size=2)["perplexity"]
        out["ablated"] = torch.tensor(ablated.tolist())
        out["logits"] = lm.forward(batch)
    out["generated"] = tlm.generate(lm, tiny.SAMPLE_TEXT["en"][:2], max_new_tokens=4, stop=())
    return out


def test_every_pass_runs_in_eval_mode_after_model_train_and_the_mode_is_restored():
    model = tiny.bridge("gpt2")  # GPT-2's dropout is 0.1: train mode changes every value
    lm = tlm.adapt(model)
    expected = _measurements(lm)
    model.train()
    batch = lm.pad(lm.tokenize(tiny.SAMPLE_TEXT["en"]))
    with torch.no_grad():  # the model really drops out in train mode: the check can fail
        noisy = model(batch.input_ids, attention_mask=batch.attention_mask)
    with torch.no_grad():
        again = model(batch.input_ids, attention_mask=batch.attention_mask)
    assert not torch.allclose(noisy, again, atol=1e-3)
    frozen = model.blocks[0].attn  # a module the caller keeps in eval mode keeps it
    frozen.eval()
    flags = {id(m): m.training for m in [*model.modules(), *model.original_model.modules()]}
    got = _measurements(lm)
    for name, value in expected.items():
        if isinstance(value, Tensor):
            torch.testing.assert_close(got[name], value, rtol=0, atol=0, equal_nan=True, msg=name)
        else:
            assert got[name] == value, name
    assert model.training and model.original_model.training and not frozen.training
    assert flags == {id(m): m.training for m in [*model.modules(), *model.original_model.modules()]}


def test_a_pass_that_raises_still_restores_the_training_mode():
    model = tiny.bridge("gpt2")
    lm = tlm.adapt(model)
    model.train()
    batch = lm.pad(lm.tokenize(tiny.SAMPLE_TEXT["en"]))

    def fail(tensor, hook):
        assert not model.training and not model.original_model.training  # inside: eval mode
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        lm.forward(batch, fwd_hooks=[(lm.write_hook(0), fail)])
    assert all(m.training for m in [*model.modules(), *model.original_model.modules()])
