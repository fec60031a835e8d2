"""Interventions change exactly the masked neurons at the write hook, compose, respect
positions, and never leave hooks behind."""

from __future__ import annotations

import pytest
import tiny
import torch

import tl_multilingual as tlm


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    model = tiny.bridge(request.param)
    lm = tlm.adapt(model)
    corpus = tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)
    stats = tlm.collect_stats(lm, corpus, progress=False)
    batch = lm.pad(lm.tokenize(tiny.SAMPLE_TEXT["en"] + tiny.SAMPLE_TEXT["fr"][:1]))
    return model, lm, stats, batch


def layer1_mask(lm, neurons=(0, 3, 7)):
    return tlm.NeuronMask.from_pairs([(1, j) for j in neurons], lm.n_layers, lm.d_mlp)


def capture(lm, batch):
    """Every MLP hook of a run (pre-activations, up projections, write hooks), seen
    after any intervention hooks already attached."""
    names = [f"blocks.{l}.mlp.hook_pre" for l in range(lm.n_layers)] + [lm.write_hook(l) for l in range(lm.n_layers)]
    if lm.gated:
        names += [lm.up_hook(l) for l in range(lm.n_layers)]
    seen = {}

    def grab(name):
        def keep(tensor, hook):
            seen[name] = tensor.detach().clone()

        return keep

    with torch.no_grad():
        lm.model.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask,
                                fwd_hooks=[(n, grab(n)) for n in names])
    return seen


def expected_values(lm, clean, op, value, mask):
    """What the write hook of layer 1 must hold after the edit, from the clean run."""
    post = clean[lm.write_hook(1)].clone()
    idx = mask.tensor[1].nonzero().squeeze(1)
    up = clean[lm.up_hook(1)][..., idx] if lm.gated else 1.0
    current = post[..., idx]
    if op == "scale":
        post[..., idx] = current * value
    elif op == "set":
        post[..., idx] = value * up
    elif op == "add":
        post[..., idx] = current + value * up
    return post


@pytest.mark.parametrize(
    "op, value",
    [("set", 0.0), ("set", 0.37), ("scale", 2.5), ("add", -0.4)],
)
def test_each_edit_changes_exactly_the_masked_neurons(setup, op, value):
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    clean = capture(lm, batch)
    with tlm.intervene(lm, [tlm.Edit(mask, op, value)]):
        edited = capture(lm, batch)
    torch.testing.assert_close(edited[lm.write_hook(1)], expected_values(lm, clean, op, value, mask))
    unmasked = ~mask.tensor[1]
    assert torch.equal(edited[lm.write_hook(1)][..., unmasked], clean[lm.write_hook(1)][..., unmasked])
    # Nothing upstream of the edit moves.
    for name in ("blocks.0.mlp.hook_pre", lm.write_hook(0), "blocks.1.mlp.hook_pre"):
        assert torch.equal(edited[name], clean[name]), name


def test_verbs_match_their_edits(setup):
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    clean = capture(lm, batch)
    means = stats.means()
    with tlm.ablate(lm, mask):
        assert torch.equal(capture(lm, batch)[lm.write_hook(1)][..., mask.tensor[1]], torch.zeros_like(clean[lm.write_hook(1)][..., mask.tensor[1]]))
    with tlm.ablate(lm, mask, value="mean", stats=stats, language="fr"):
        got = capture(lm, batch)[lm.write_hook(1)]
    torch.testing.assert_close(got, expected_values(lm, clean, "set", means[1, :, 1].to(torch.float32)[mask.tensor[1]], mask))
    with tlm.boost(lm, mask, factor=3.0):
        got = capture(lm, batch)[lm.write_hook(1)]
    torch.testing.assert_close(got, expected_values(lm, clean, "scale", 3.0, mask))
    with tlm.steer(lm, mask, to="zh", source="en", stats=stats, mode="add", strength=2.0):
        got = capture(lm, batch)[lm.write_hook(1)]
    delta = (2.0 * (means[1, :, 3] - means[1, :, 0])).to(torch.float32)[mask.tensor[1]]
    torch.testing.assert_close(got, expected_values(lm, clean, "add", delta, mask))
    with tlm.steer(lm, mask, to="de", stats=stats):
        got = capture(lm, batch)[lm.write_hook(1)]
    torch.testing.assert_close(got, expected_values(lm, clean, "set", means[1, :, 2].to(torch.float32)[mask.tensor[1]], mask))


def test_patch_copies_the_source_run(setup):
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    other = lm.pad(lm.tokenize(tiny.SAMPLE_TEXT["zh"] + tiny.SAMPLE_TEXT["ru"][:1]))
    width = min(batch.input_ids.shape[1], other.input_ids.shape[1])
    batch = lm.pad([row[:width] for row in batch.input_ids.tolist()])
    other = lm.pad([row[:width] for row in other.input_ids.tolist()])
    source = tlm.record(lm, other)
    clean_source = capture(lm, other)
    torch.testing.assert_close(source[:, :, 1], clean_source[lm.write_hook(1)])
    with tlm.patch(lm, mask, source):
        got = capture(lm, batch)[lm.write_hook(1)]
    idx = mask.tensor[1]
    torch.testing.assert_close(got[..., idx], clean_source[lm.write_hook(1)][..., idx])
    # One vector broadcast to every position: the source's last position.
    with tlm.patch(lm, mask, source[0, -1]):
        got = capture(lm, batch)[lm.write_hook(1)]
    assert torch.equal(got[..., idx], source[0, -1, 1, idx].expand_as(got[..., idx]))
    with pytest.raises(tlm.TLMultilingualError, match="patch source"):
        with tlm.patch(lm, mask, source[:, :3]):
            capture(lm, batch)


def test_composition_applies_edits_in_order(setup):
    model, lm, stats, batch = setup
    a = layer1_mask(lm, (0, 1, 2))
    b = layer1_mask(lm, (2, 3))
    clean = capture(lm, batch)
    with tlm.ablate(lm, a) + tlm.boost(lm, b, factor=2.0):
        got = capture(lm, batch)[lm.write_hook(1)]
    post = clean[lm.write_hook(1)]
    assert torch.equal(got[..., [0, 1, 2]], torch.zeros_like(post[..., [0, 1, 2]]))
    torch.testing.assert_close(got[..., 3], 2.0 * post[..., 3])
    with tlm.boost(lm, b, factor=2.0) + tlm.ablate(lm, a, value=1.0):
        got = capture(lm, batch)[lm.write_hook(1)]
    up = clean[lm.up_hook(1)][..., 2] if lm.gated else 1.0
    torch.testing.assert_close(got[..., 2], 1.0 * up * torch.ones_like(post[..., 2]))


def test_positions_restrict_the_edit(setup):
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    clean = capture(lm, batch)[lm.write_hook(1)]
    idx = mask.tensor[1]
    with tlm.ablate(lm, mask, positions=[1, 2]):
        got = capture(lm, batch)[lm.write_hook(1)]
    assert torch.equal(got[:, 1:3][..., idx], torch.zeros_like(got[:, 1:3][..., idx]))
    assert torch.equal(got[:, 3:], clean[:, 3:])
    assert torch.equal(got[:, :1], clean[:, :1])
    rows = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    rows[0, -1] = True
    with tlm.boost(lm, mask, factor=0.0, positions=rows):
        got = capture(lm, batch)[lm.write_hook(1)]
    assert torch.equal(got[0, -1][idx], torch.zeros_like(got[0, -1][idx]))
    assert torch.equal(got[1:], clean[1:])


def test_layer_restriction(setup):
    model, lm, stats, batch = setup
    both = tlm.NeuronMask.from_pairs([(0, 1), (1, 1)], lm.n_layers, lm.d_mlp)
    clean = capture(lm, batch)
    with tlm.ablate(lm, both, layers=[1]):
        got = capture(lm, batch)
    assert torch.equal(got[lm.write_hook(0)], clean[lm.write_hook(0)])
    assert torch.equal(got[lm.write_hook(1)][..., 1], torch.zeros_like(got[lm.write_hook(1)][..., 1]))


def hook_count(model):
    """Every forward hook on the model: torch module hooks (TransformerLens hook points
    included) and the hook points' own lists."""
    total = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return total + sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


def test_hooks_are_removed_even_when_the_body_raises(setup):
    model, lm, stats, batch = setup
    before = hook_count(model)
    with pytest.raises(RuntimeError, match="boom"):
        with tlm.ablate(lm, layer1_mask(lm)):
            assert hook_count(model) > before
            raise RuntimeError("boom")
    assert hook_count(model) == before
    with tlm.boost(lm, layer1_mask(lm)) + tlm.ablate(lm, layer1_mask(lm, (5,))):
        pass
    assert hook_count(model) == before


def test_hooks_are_removed_when_the_body_raises_while_the_intervention_is_kept(setup):
    """Garbage collection cannot tidy up here: the intervention object stays referenced."""
    model, lm, stats, batch = setup
    clean = capture(lm, batch)[lm.write_hook(1)]
    before = hook_count(model)
    kept = tlm.boost(lm, layer1_mask(lm), factor=3.0) + tlm.ablate(lm, layer1_mask(lm, (5,)))
    with pytest.raises(RuntimeError, match="boom"):
        with kept:
            assert hook_count(model) > before
            raise RuntimeError("boom")
    assert hook_count(model) == before
    assert torch.equal(capture(lm, batch)[lm.write_hook(1)], clean)  # no edit applies any more
    with kept:  # and it can be entered again
        assert not torch.equal(capture(lm, batch)[lm.write_hook(1)], clean)
    assert hook_count(model) == before


def test_pooled_mean_ablation_writes_the_token_weighted_mean_of_all_languages(setup):
    """``value="mean"`` without a language: sums over every language divided by every
    counted token, times the up projection on gated models, at the masked neurons only."""
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    idx = mask.tensor[1]
    pooled = (stats.sums.sum(-1) / stats.tokens.sum())[1, idx]
    for k in range(len(stats.languages)):  # the pooled mean is no single language's mean
        assert not torch.allclose(pooled, stats.sums[1, idx, k] / stats.tokens[k])
    clean = capture(lm, batch)
    with tlm.ablate(lm, mask, value="mean", stats=stats):
        got = capture(lm, batch)[lm.write_hook(1)]
    up = clean[lm.up_hook(1)][..., idx] if lm.gated else torch.ones_like(got[..., idx])
    torch.testing.assert_close(got[..., idx], pooled.to(up.dtype) * up)
    assert torch.equal(got[..., ~idx], clean[lm.write_hook(1)][..., ~idx])


def test_hook_lists_work_with_transformer_lens(setup):
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    with torch.no_grad():
        with tlm.ablate(lm, mask, value="mean", stats=stats):
            inside = model(batch.input_ids, attention_mask=batch.attention_mask)
        hooks = tlm.ablation_hooks(lm, mask, value="mean", stats=stats)
        via_tl = model.run_with_hooks(batch.input_ids, attention_mask=batch.attention_mask, fwd_hooks=hooks)
        with model.hooks(fwd_hooks=hooks):
            via_ctx = model(batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(inside, via_tl)
    torch.testing.assert_close(inside, via_ctx)


def test_zeroing_gated_neurons_equals_zeroing_act_fn_of_the_gate():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    mask = tlm.NeuronMask.from_pairs([(0, 2), (0, 9), (1, 4), (1, 30)], lm.n_layers, lm.d_mlp)
    batch = lm.pad(lm.tokenize(tiny.SAMPLE_TEXT["de"]))
    with torch.no_grad():
        with tlm.ablate(lm, mask):
            ours = model(batch.input_ids, attention_mask=batch.attention_mask)
        handles = []
        for layer, mlp in enumerate(model.original_model.model.layers):
            idx = mask.tensor[layer].nonzero().squeeze(1)

            def zero_gate(module, inputs, output, idx=idx):
                output = output.clone()
                output[..., idx] = 0.0
                return output

            handles.append(mlp.mlp.act_fn.register_forward_hook(zero_gate))
        try:
            reference = model(batch.input_ids, attention_mask=batch.attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        clean = model(batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(ours, reference)
    assert not torch.allclose(ours, clean)


def test_bad_interventions_are_refused(setup):
    model, lm, stats, batch = setup
    with pytest.raises(tlm.MaskError):
        tlm.ablate(lm, tlm.NeuronMask.empty(3, 3)).hooks()
    with pytest.raises(tlm.TLMultilingualError):
        tlm.ablate(lm, layer1_mask(lm), value="mean")
    with pytest.raises(tlm.TLMultilingualError):
        tlm.steer(lm, layer1_mask(lm), to="fr", stats=stats, mode="add")
    with pytest.raises(tlm.TLMultilingualError):
        tlm.Edit(layer1_mask(lm), "explode", 1.0)


# -- positions count each text's real tokens ------------------------------------------


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_boost_at_the_last_position_edits_each_texts_last_real_token(arch, side):
    """The tutorial's ``boost(..., positions=[-1])`` on a padded batch: a short text's
    last-token logits are those of the text run alone, next to a longer text."""
    lm = tlm.adapt(tiny.bridge(arch), padding_side=side)
    mask = tlm.NeuronMask.full(lm.n_layers, lm.d_mlp)
    ids = lm.tokenize([tiny.SAMPLE_TEXT["en"][1], tiny.SAMPLE_TEXT["en"][0]])
    assert len(ids[0]) > len(ids[1])
    batch, alone = lm.pad(ids), lm.pad(ids[1:])
    clean = lm.forward(alone)[0, -1]
    with tlm.boost(lm, mask, factor=3.0, positions=[-1]):
        boosted_alone = lm.forward(alone)[0, -1]
        logits = lm.forward(batch)
    assert not torch.allclose(boosted_alone, clean, atol=1e-2)  # the edit does something
    last = [len(ids[0]) - 1, (len(ids[1]) - 1) if side == "right" else batch.input_ids.shape[1] - 1]
    torch.testing.assert_close(logits[1, last[1]], boosted_alone, rtol=1e-5, atol=1e-5)
    with tlm.boost(lm, mask, factor=3.0, positions=[-1]):
        longer_alone = lm.forward(lm.pad(ids[:1]))[0, -1]
    torch.testing.assert_close(logits[0, last[0]], longer_alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_perplexity_under_an_edit_at_position_minus_2_does_not_depend_on_the_batch(side):
    lm = tlm.adapt(tiny.bridge("gpt2"), padding_side=side)
    corpus = tlm.Corpus.from_dict({"en": tiny.SAMPLE_TEXT["en"], "zh": tiny.SAMPLE_TEXT["zh"]})
    mask = tlm.NeuronMask.full(lm.n_layers, lm.d_mlp)
    clean = tlm.perplexity(lm, corpus, per_text=True, batch_size=1)["perplexity"]
    frames = []
    for size in (3, 1):
        with tlm.boost(lm, mask, factor=4.0, positions=[-2]):
            frames.append(tlm.perplexity(lm, corpus, per_text=True, batch_size=size)["perplexity"])
    assert (frames[1] - clean).abs().min() > 1e-3  # every text's score changes
    torch.testing.assert_close(torch.tensor(frames[0].values), torch.tensor(frames[1].values),
                               rtol=1e-5, atol=0)


def test_positions_of_every_kind_mark_the_same_real_tokens():
    """Indices, negative indices, slices, integer and boolean tensors all count a
    text's real tokens; a ``[batch, pos]`` mask marks the padded batch itself."""
    from tl_multilingual.causal.interventions import _position_mask, check_positions

    lm = tlm.adapt(tiny.bridge("gpt2"), padding_side="left")
    batch = lm.pad([[5, 6, 7, 8, 9], [5, 6, 7]])  # row 1 is padded on the left by 2
    cpu = torch.device("cpu")

    def marked(positions):
        rows = _position_mask(check_positions(positions), (2, 5), cpu, batch)
        return [r.nonzero().squeeze(1).tolist() for r in rows]

    assert marked([-1]) == [[4], [4]]
    assert marked(0) == [[0], [2]]
    assert marked([0, -2]) == [[0, 3], [2, 3]]
    assert marked(slice(1, None)) == [[1, 2, 3, 4], [3, 4]]
    assert marked(slice(None, None, -2)) == [[0, 2, 4], [2, 4]]
    assert marked(torch.tensor([1])) == [[1], [3]]
    assert marked(torch.tensor([False, True])) == [[1], [3]]
    two_d = torch.zeros(2, 5, dtype=torch.bool)
    two_d[1, 3] = True
    assert marked(two_d) == [[], [3]]


# -- edits never write into the hooked tensor -------------------------------------------


@pytest.mark.parametrize("verb", ["ablate", "boost", "steer", "patch"])
def test_a_reference_kept_by_an_earlier_hook_still_holds_the_clean_values(setup, verb):
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    clean = capture(lm, batch)[lm.write_hook(1)]
    kept = {}

    def cache(tensor, hook):  # keeps the tensor itself, as a cache does
        kept["post"] = tensor

    interventions = {
        "ablate": lambda: tlm.ablate(lm, mask),
        "boost": lambda: tlm.boost(lm, mask, factor=3.0),
        "steer": lambda: tlm.steer(lm, mask, to="fr", source="en", stats=stats, mode="add"),
        "patch": lambda: tlm.patch(lm, mask, torch.zeros(lm.n_layers, lm.d_mlp)),
    }[verb]()
    with lm.hooks([(lm.write_hook(1), cache)]), interventions:
        lm.forward(batch)
        edited = capture(lm, batch)[lm.write_hook(1)]
    assert not torch.equal(edited, clean)
    assert torch.equal(kept["post"], clean)


# -- one validation of values, positions and masks --------------------------------------

NAN, INF = float("nan"), float("inf")


def _bad_edits(lm, stats):
    mask = layer1_mask(lm)
    nan_source = torch.zeros(lm.n_layers, lm.d_mlp)
    nan_source[1, 3] = NAN
    meta_mask = layer1_mask(lm)
    meta_mask.tensor = meta_mask.tensor.to("meta")
    return {
        "boost factor nan": lambda: tlm.boost(lm, mask, factor=NAN),
        "boost factor inf": lambda: tlm.boost(lm, mask, factor=INF),
        "scale -inf": lambda: tlm.intervene(lm, [tlm.Edit(mask, "scale", -INF)]),
        "patch source nan": lambda: tlm.patch(lm, mask, nan_source),
        "steer strength nan": lambda: tlm.steer(lm, mask, to="fr", source="en", stats=stats,
                                                mode="add", strength=NAN),
        "steer strength inf": lambda: tlm.steer(lm, mask, to="fr", source="en", stats=stats,
                                                mode="add", strength=INF),
        "ablate value nan": lambda: tlm.ablate(lm, mask, value=NAN),
        "set value inf tensor": lambda: tlm.intervene(
            lm, [tlm.Edit(mask, "set", torch.full((lm.n_layers, lm.d_mlp), INF))]),
        "boost factor string": lambda: tlm.boost(lm, mask, factor="2"),
        "positions floats": lambda: tlm.boost(lm, mask, positions=[1.5]),
        "positions float tensor": lambda: tlm.ablate(lm, mask, positions=torch.tensor([1.0])),
        "positions on meta": lambda: tlm.ablate(
            lm, mask, positions=torch.tensor([1], device="meta")),
        "boolean positions on meta": lambda: tlm.ablate(
            lm, mask, positions=torch.ones(4, dtype=torch.bool, device="meta")),
        "positions slice of floats": lambda: tlm.ablate(lm, mask, positions=slice(0.5, 2)),
        "positions True": lambda: tlm.ablate(lm, mask, positions=True),
        "patch source on meta": lambda: tlm.patch(lm, mask, torch.zeros(lm.n_layers, lm.d_mlp,
                                                                        device="meta")),
        "mask moved to meta": lambda: tlm.ablate(lm, meta_mask),
        "steer set strength nan": lambda: tlm.steer(lm, mask, to="fr", stats=stats, strength=NAN),
        "steer set strength inf tensor": lambda: tlm.steer(lm, mask, to="fr", stats=stats,
                                                           strength=torch.tensor(INF)),
        "steer set strength 2": lambda: tlm.steer(lm, mask, to="fr", stats=stats, strength=2.0),
        "steer add without source": lambda: tlm.steer(lm, mask, to="fr", stats=stats, mode="add"),
        "layers floats": lambda: tlm.ablate(lm, mask, layers=[0.5]),
        "layers NaN": lambda: tlm.ablate(lm, mask, layers=[NAN]),
        "layers one number": lambda: tlm.boost(lm, mask, layers=1),
        "layers slice of floats": lambda: tlm.ablate(lm, mask, layers=slice(0.5, 2)),
        "layers True": lambda: tlm.ablate(lm, mask, layers=[True]),
        "layers not a collection": lambda: tlm.ablate(lm, mask, layers=object()),
    }


BAD_EDITS = [
    "boost factor nan", "boost factor inf", "scale -inf", "patch source nan", "steer strength nan",
    "steer strength inf", "ablate value nan", "set value inf tensor", "boost factor string",
    "positions floats", "positions float tensor", "positions on meta", "boolean positions on meta",
    "positions slice of floats", "positions True", "patch source on meta", "mask moved to meta",
    "steer set strength nan", "steer set strength inf tensor", "steer set strength 2",
    "steer add without source", "layers floats", "layers NaN", "layers one number",
    "layers slice of floats", "layers True", "layers not a collection",
]


@pytest.mark.parametrize("case", BAD_EDITS)
def test_bad_values_positions_and_masks_are_refused_before_any_hook(setup, case):
    model, lm, stats, batch = setup
    before = hook_count(model)
    with pytest.raises(tlm.TLMultilingualError) as caught:
        with _bad_edits(lm, stats)[case]():
            lm.forward(batch)
    assert hook_count(model) == before
    if "meta" in case:
        assert "meta" in str(caught.value)
    if "nan" in case or "inf" in case:
        assert "finite" in str(caught.value)


@pytest.mark.parametrize("positions", [[50], [-50], 12, torch.tensor([0, 13]), [-13]])
def test_positions_beyond_a_texts_real_tokens_are_refused_during_the_pass(setup, positions):
    """The shortest text of the batch has 12 real tokens: 11 and -12 are its first and
    last, 12, 13 and -13 are beyond it (though inside the padded batch). The pass
    stops with the library's error and leaves no hook."""
    model, lm, stats, batch = setup
    assert sorted(batch.attention_mask.sum(1).tolist())[:2] == [12, 13]
    before = hook_count(model)
    with pytest.raises(tlm.TLMultilingualError, match="outside text"):
        with tlm.ablate(lm, layer1_mask(lm), positions=positions):
            lm.forward(batch)
    assert hook_count(model) == before
    with tlm.ablate(lm, layer1_mask(lm), positions=[11, -12]):  # the shortest text's ends
        lm.forward(batch)


def test_a_boolean_mask_that_marks_padding_or_misfits_the_batch_is_refused(setup):
    model, lm, stats, batch = setup
    before = hook_count(model)
    padding = ~batch.attention_mask.bool()
    assert padding.any()
    for bad, message in ((padding, "marks padding"), (torch.ones(2, 3, dtype=torch.bool), "shape")):
        with pytest.raises(tlm.TLMultilingualError, match=message):
            with tlm.ablate(lm, layer1_mask(lm), positions=bad):
                lm.forward(batch)
        assert hook_count(model) == before


def test_a_masks_layers_are_whole_numbers(setup):
    _, lm, _, _ = setup
    mask = layer1_mask(lm)
    for bad in ([0.5], [NAN], [True], ["1"]):
        with pytest.raises(tlm.MaskError, match="whole numbers"):
            mask.restrict(bad)
    assert mask.restrict([torch.tensor(1)]) == mask and mask.restrict([0]).count() == 0


def test_a_nan_outside_the_edited_neurons_is_not_an_edit_value(setup):
    """Only the values an edit writes must be finite: a source whose other neurons are
    NaN patches the same as one whose other neurons are zero."""
    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    source = torch.randn(lm.n_layers, lm.d_mlp)
    other = source.clone()
    other[~mask.tensor] = NAN
    with tlm.patch(lm, mask, source):
        expected = lm.forward(batch)
    with tlm.patch(lm, mask, other):
        got = lm.forward(batch)
    assert torch.equal(got, expected) and torch.isfinite(got).all()


def test_numpy_values_and_zero_dimensional_tensors_mean_what_plain_numbers_do(setup):
    import numpy as np

    model, lm, stats, batch = setup
    mask = layer1_mask(lm)
    with tlm.boost(lm, mask, factor=2.0, positions=[0, -1]):
        expected = lm.forward(batch)
    for factor, positions in ((np.float32(2.0), np.array([0, -1])),
                              (torch.tensor(2.0), torch.tensor([0, -1])),
                              (2, (0, torch.tensor(-1)))):
        with tlm.boost(lm, mask, factor=factor, positions=positions):
            assert torch.equal(lm.forward(batch), expected)
    with tlm.boost(lm, mask, factor=2.0):
        assert not torch.equal(lm.forward(batch), expected)
