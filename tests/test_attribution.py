"""Attribution: effective scores add up to TransformerLens's direct logit attribution,
gradient x activation matches finite differences, and a planted case."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm
from tl_multilingual.causal.attribution import answer_token

RECORDS = [
    {"id": "a", "text": {"en": "The cat sleeps on the", "fr": "Le chat dort sur le"}, "answer": {"en": " mat", "fr": " tapis"}},
    {"id": "b", "text": {"en": "We walked to the", "fr": "Nous avons marché au"}, "answer": {"en": " market", "fr": " marché"}},
]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_effective_scores_sum_to_transformer_lens_direct_logit_attribution(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    items = tlm.ParallelItems.from_records(RECORDS)
    attr = tlm.attribute(lm, items, method="effective", through_norm=True, progress=False)
    for i, item in enumerate(items):
        for p, lang in enumerate(items.languages):
            ids = torch.tensor([lm.tokenize([item.texts[lang]])[0]])
            gold = answer_token(lm, item.texts[lang], item.answer(lang))
            with torch.no_grad():
                _, cache = model.run_with_cache(ids)
            for layer in range(lm.n_layers):
                key = next(k for k in (f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_out") if k in cache)
                stack = cache[key][:, -1:][None]  # [component, batch, pos, d_model]
                dla = cache.logit_attrs(stack, tokens=torch.tensor([gold]), pos_slice=-1)
                bias = model.blocks[layer].mlp.b_out
                bias_part = 0.0
                if bias is not None:
                    bias_stack = bias.detach()[None, None, None, :].expand(1, 1, 1, -1)
                    bias_part = cache.logit_attrs(bias_stack, tokens=torch.tensor([gold]), pos_slice=-1).item()
                total = attr.scores[i, p, layer].sum().item() + bias_part
                assert total == pytest.approx(dla.item(), rel=1e-3, abs=1e-4)


def test_contribution_is_activation_times_output_row_norm():
    model = tiny.bridge("gemma3")
    lm = tlm.adapt(model)
    items = tlm.ParallelItems.from_records(RECORDS)
    attr = tlm.attribute(lm, items, method="contribution", progress=False)
    batch = lm.pad(lm.tokenize([items[0].texts["fr"]]))
    values = tlm.record(lm, batch)[0, -1]  # [layer, neuron]
    for layer in range(lm.n_layers):
        norms = model.blocks[layer].mlp.W_out.detach().norm(dim=-1)
        torch.testing.assert_close(attr.scores[0, 1, layer], values[layer].abs() * norms)


def test_grad_x_act_matches_finite_differences():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    items = tlm.ParallelItems.from_records(RECORDS[:1])
    attr = tlm.attribute(lm, items, method="grad_x_act", progress=False)
    ids = lm.tokenize([items[0].texts["en"]])[0]
    gold = answer_token(lm, items[0].texts["en"], " mat")
    batch = lm.pad([ids])

    def metric_with(layer, neuron, scale):
        def nudge(tensor, hook):
            tensor = tensor.clone()
            tensor[0, -1, neuron] = tensor[0, -1, neuron] * scale
            return tensor

        logits = lm.forward(batch, fwd_hooks=[(lm.write_hook(layer), nudge)]).double()
        return torch.log_softmax(logits[0, -1], -1)[gold].item()

    eps = 1e-2  # float32 logits: a smaller step drowns in rounding
    for layer, neuron in [(0, 3), (1, 10), (1, 40)]:
        # d metric / d log(scale) at scale 1 = m * d metric / d m
        fd = (metric_with(layer, neuron, 1 + eps) - metric_with(layer, neuron, 1 - eps)) / (2 * eps)
        assert attr.scores[0, 0, layer, neuron].item() == pytest.approx(fd, rel=2e-2, abs=1e-5)


def test_planted_shared_neurons_are_all_shared_top_attributed_and_boosting_helps():
    toy = tlm.models.planted()
    lm = tlm.adapt(toy.model)
    records = [{"id": str(i), "text": {"en": toy.texts["en"][i], "ru": toy.texts["ru"][i]},
                "answer": {"en": toy.answer, "ru": toy.answer}} for i in range(30, 40)]
    items = tlm.ParallelItems.from_records(records)
    sharing = tlm.sharing(lm, items, progress=False)
    for i in range(len(items)):
        all_shared = sharing.mask(i, "all_shared").tensor[0]
        assert all_shared[toy.shared].all()
    attr = tlm.attribute(lm, items, method="effective", progress=False)
    top = attr.top(len(toy.shared))
    assert (top.sort(-1).values == torch.tensor(toy.shared)).all()
    shares = tlm.attribution.class_attribution(sharing, attr, top_k=len(toy.shared)).query("layer == 'all'")
    assert (shares.query("`class` == 'all_shared'")["share"] == 1.0).all()
    assert (shares.groupby("language")["share"].sum().round(9) == 1.0).all()
    table = tlm.sharing_experiments.boost_experiment(lm, items, factors=[1.0, 2.0], controls=2, n_boot=200, progress=False)
    boosted = table.query("factor == 2.0")
    assert (boosted["logprob_change"] > 0).all() and (boosted["logprob_ci_low"] > 0).all()
    assert (boosted["control_logprob_change"] < boosted["logprob_change"] / 4).all()
    assert (table.query("factor == 1.0")["logprob_change"] == 0).all()
    profiles = tlm.sharing_experiments.correct_vs_incorrect(lm, items, sharing=sharing)
    assert set(profiles.columns) == {"language", "correct", "layer", "class", "percent", "n_items"}
    assert profiles.groupby(["language", "correct", "layer"])["percent"].sum().round(6).eq(100.0).all()


def test_class_shares_of_the_top_neurons_are_counted_item_by_item():
    import numpy as np

    from tl_multilingual.causal.attribution import Attribution, class_attribution
    from tl_multilingual.neurons.sharing_classes import SHARING_CLASSES

    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(
        0, 4, (3, 2, 10), generator=generator, dtype=torch.uint8
    )  # 3 items, 2 languages
    sharing = tlm.Sharing(("en", "fr"), ["a", "b", "c"], codes, 0.0, "last")
    scores = torch.randn(3, 2, 2, 10, generator=generator)
    attribution = Attribution("effective", ("en", "fr"), ["a", "b", "c"], scores)
    frame = class_attribution(sharing, attribution, top_k=4)
    assert frame.attrs["top_k"] == 4
    classes = sharing.classes().numpy()  # [item, layer, neuron]
    for p, lang in enumerate(("en", "fr")):
        share = np.zeros((3, 2, 4))  # [item, layer, class]
        base = np.zeros((3, 2, 4))
        for i in range(3):
            for layer in range(2):
                top = np.argsort(-scores[i, p, layer].numpy(), kind="stable")[:4]
                for c in range(4):
                    share[i, layer, c] = np.mean(classes[i, layer, top] == c)
                    base[i, layer, c] = np.mean(classes[i, layer] == c)
        for layer in (0, 1, "all"):
            s = share.mean((0, 1)) if layer == "all" else share[:, layer].mean(0)
            b = base.mean((0, 1)) if layer == "all" else base[:, layer].mean(0)
            rows = frame[(frame["language"] == lang) & (frame["layer"].astype(str) == str(layer))]
            for c, cls in enumerate(SHARING_CLASSES):
                row = rows[rows["class"] == cls].iloc[0]
                assert row["share"] == pytest.approx(s[c]) and row["base"] == pytest.approx(b[c])
                if b[c] > 0:
                    assert row["enrichment"] == pytest.approx(s[c] / b[c])
                else:
                    assert np.isnan(row["enrichment"])
