"""Statistics are exact: batched, padded, streamed collection equals a hand computation."""

from __future__ import annotations

import pytest
import tiny
import torch
import torch.nn.functional as F

import tl_multilingual as tlm

ARCHS = ["gpt2", "llama", "qwen2", "gemma3", "bloom", "mistral", "neox", "opt", "xglm"]

# The activation each gated family applies to its gate (checked independently of the adapter).
GATED_ACT = {
    "llama": F.silu,
    "qwen2": F.silu,
    "mistral": F.silu,
    "gemma3": lambda x: F.gelu(x, approximate="tanh"),
}


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request):
    return request.param, tiny.bridge(request.param)


def corpus() -> tlm.Corpus:
    return tlm.Corpus.from_dict(tiny.SAMPLE_TEXT)


def hand_counts(model, arch, texts_by_lang, *, threshold=0.0, positions="all", bos=True):
    """Counts from one text at a time: capture the MLP hook and count by hand (never the
    BOS position when ``bos``)."""
    gated = arch in GATED_ACT
    name = "hook_pre" if gated else "hook_post"
    n_layers = len(model.blocks)
    per_lang = []
    tokens = []
    for texts in texts_by_lang:
        total = None
        n_tokens = 0
        for ids in texts:
            captured = {}

            def grab(tensor, hook, store=captured):
                store[len(store)] = tensor.detach()

            hooks = [(f"blocks.{l}.mlp.{name}", grab) for l in range(n_layers)]
            with torch.no_grad():
                model.run_with_hooks(torch.tensor([ids]), fwd_hooks=hooks)
            acts = [captured[l][0] for l in range(n_layers)]  # [pos, d_mlp]
            if gated:
                acts = [GATED_ACT[arch](a) for a in acts]
            rows = slice(int(bos), None) if positions == "all" else slice(len(ids) - 1, None)
            counts = torch.stack([(a[rows] > threshold).sum(0) for a in acts])
            total = counts if total is None else total + counts
            n_tokens += len(ids[rows])
        per_lang.append(total)
        tokens.append(n_tokens)
    return torch.stack(per_lang, dim=-1), tokens


def token_ids(lm, data):
    return [lm.tokenize(texts) for texts in data.values()]


@pytest.mark.parametrize("side", ["right", "left"])
def test_batched_padded_counts_equal_one_text_at_a_time(arch_model, side):
    arch, model = arch_model
    lm = tlm.adapt(model, padding_side=side)
    stats = tlm.collect_stats(lm, corpus(), batch_size=3, progress=False)
    expected, tokens = hand_counts(model, arch, token_ids(lm, tiny.SAMPLE_TEXT), bos=lm.prepend_bos)
    assert stats.token_counts == dict(zip(stats.languages, tokens))
    assert torch.equal(stats.active_counts, expected)
    singles = tlm.collect_stats(lm, corpus(), batch_size=1, progress=False)
    assert torch.equal(stats.active_counts, singles.active_counts)
    torch.testing.assert_close(stats.sums, singles.sums, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.sum_squares, singles.sum_squares, rtol=1e-5, atol=1e-4)


def test_true_mlp_width_comes_from_the_hooks(arch_model):
    arch, model = arch_model
    lm = tlm.adapt(model)
    assert lm.d_mlp == (128 if arch == "bloom" else 48)
    assert lm.n_layers == 2
    assert lm.gated == (arch in GATED_ACT)
    if arch in ("opt", "xglm"):  # their TL config reports 4 * d_model
        assert model.cfg.d_mlp != lm.d_mlp


def test_last_token_policy_and_threshold(arch_model):
    arch, model = arch_model
    lm = tlm.adapt(model)
    stats = tlm.collect_stats(lm, corpus(), token_policy="last", threshold=0.05, batch_size=2, progress=False)
    expected, tokens = hand_counts(
        model, arch, token_ids(lm, tiny.SAMPLE_TEXT), threshold=0.05, positions="last"
    )
    assert torch.equal(stats.active_counts, expected)
    assert list(stats.token_counts.values()) == [len(t) for t in tiny.SAMPLE_TEXT.values()]


RECORDS = {
    "en": [("Question: how many legs has a cat?\nAnswer:", " Four legs."), ("Say hello.", " Hello there!")],
    "fr": [("Question : combien de pattes a un chat ?\nRéponse :", " Quatre pattes."), ("Dis bonjour.", " Bonjour !")],
}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_response_only_counts_equal_full_minus_prompt(arch):
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    with_answers = tlm.Corpus.from_dict(RECORDS)
    prompts_only = tlm.Corpus.from_dict({k: [p for p, _ in v] for k, v in RECORDS.items()})
    response = tlm.collect_stats(lm, with_answers, token_policy="response", batch_size=2, progress=False)
    full = tlm.collect_stats(lm, with_answers, token_policy="all", batch_size=2, progress=False)
    prompt = tlm.collect_stats(lm, prompts_only, token_policy="all", batch_size=2, progress=False)
    assert torch.equal(response.active_counts, full.active_counts - prompt.active_counts)
    assert response.tokens.tolist() == (full.tokens - prompt.tokens).tolist()
    torch.testing.assert_close(response.sums, full.sums - prompt.sums, rtol=1e-6, atol=1e-4)


def test_merged_stats_equal_stats_collected_in_one_go():
    model = tiny.bridge("qwen2")
    whole = corpus()
    first = tlm.Corpus.from_dict({k: v[:1] for k, v in tiny.SAMPLE_TEXT.items()})
    rest = tlm.Corpus.from_dict({k: v[1:] for k, v in tiny.SAMPLE_TEXT.items()})
    together = tlm.collect_stats(model, whole, progress=False)
    merged = tlm.collect_stats(model, first, progress=False) + tlm.collect_stats(model, rest, progress=False)
    assert torch.equal(merged.active_counts, together.active_counts)
    assert merged.token_counts == together.token_counts
    torch.testing.assert_close(merged.sums, together.sums, rtol=1e-6, atol=1e-5)


def test_token_budget_counts_exactly_the_first_tokens():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    stats = tlm.collect_stats(lm, corpus(), max_tokens_per_language=15, progress=False)
    assert set(stats.token_counts.values()) == {15}
    # The same as collecting the first 15 text tokens of each language by hand.
    first_ids = []
    for texts in tiny.SAMPLE_TEXT.values():
        kept, used = [], 0
        for ids in lm.tokenize(texts):
            if used >= 15:
                break
            take = min(len(ids) - 1, 15 - used)  # the first id is BOS
            kept.append(ids[: 1 + take])
            used += take
        first_ids.append(kept)
    expected, _ = hand_counts(model, "llama", first_ids)
    assert torch.equal(stats.active_counts, expected)


def test_long_texts_are_truncated_or_split_with_a_warning():
    model = tiny.bridge("gpt2")
    lm = tlm.adapt(model)
    long = tlm.Corpus.from_dict({"en": [" ".join(tiny.SAMPLE_TEXT["en"] * 3)], "fr": ["Bonjour."]})
    n_ids = len(lm.tokenize([long["en"][0].text])[0])
    with pytest.warns(UserWarning, match="truncated"):
        cut = tlm.collect_stats(lm, long, max_length=20, progress=False)
    assert cut.token_counts["en"] == 19
    with pytest.warns(UserWarning, match="split"):
        split = tlm.collect_stats(lm, long, max_length=20, overflow="split", progress=False)
    assert split.token_counts["en"] == n_ids - 1  # every text token, BOS re-added per piece
    with pytest.raises(tlm.CorpusError, match="max_length"):
        tlm.collect_stats(lm, long, max_length=20, overflow="error", progress=False)


def forward_hook_count(model) -> int:
    total = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    return total + sum(len(hp.fwd_hooks) for hp in model.hook_dict.values())


def test_no_hooks_are_left_after_success_errors_and_interrupts():
    model = tiny.bridge("llama")
    lm = tlm.adapt(model)
    before = forward_hook_count(model)
    first = tlm.collect_stats(lm, corpus(), progress=False)
    assert forward_hook_count(model) == before
    with pytest.raises(tlm.CorpusError):
        tlm.collect_stats(lm, corpus(), token_policy="response", progress=False)
    assert forward_hook_count(model) == before

    calls = {"n": 0}

    def interrupt(tensor, hook):  # a user's own hook, interrupting the third forward pass
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    with model.hooks(fwd_hooks=[(lm.read_hook(0), interrupt)]):
        with_users_hook = forward_hook_count(model)
        with pytest.raises(KeyboardInterrupt):
            tlm.collect_stats(lm, corpus(), progress=False)
        assert calls["n"] == 3
        assert forward_hook_count(model) == with_users_hook
    assert forward_hook_count(model) == before
    # The model still works and gives the same statistics afterwards.
    again = tlm.collect_stats(lm, corpus(), progress=False)
    assert again.token_counts == first.token_counts
    assert torch.equal(again.active_counts, first.active_counts)
    assert torch.equal(again.sums, first.sums)


def test_bad_input_is_refused_before_running():
    lm = tlm.adapt(tiny.bridge("llama"))
    with pytest.raises(tlm.CorpusError):
        tlm.collect_stats(lm, {"en": ["a"]}, progress=False)
    with pytest.raises(tlm.CorpusError):
        tlm.collect_stats(lm, tlm.Corpus.from_dict({"en": [], "fr": ["x"]}), progress=False)
    with pytest.raises(tlm.CorpusError):
        tlm.collect_stats(lm, corpus(), token_policy="middle", progress=False)
    with pytest.raises(tlm.CorpusError):
        tlm.collect_stats(lm, corpus(), batch_size=0, progress=False)


def test_stats_record_what_produced_them():
    lm = tlm.adapt(tiny.bridge("gemma3"))
    stats = tlm.collect_stats(lm, corpus(), progress=False)
    assert stats.model["architecture"] == "Gemma3ForCausalLM"
    assert stats.model["d_mlp"] == 48
    assert stats.corpus["fingerprint"] == corpus().fingerprint()
    assert stats.model["n_layers"] == 2
    assert stats.corpus["texts"] == {lang: len(texts) for lang, texts in tiny.SAMPLE_TEXT.items()}
    # Means and variances follow from the totals (the totals themselves are checked
    # against an independent capture in test_sums_are_float64_totals_of_the_neuron_activations).
    tokens = stats.tokens.to(torch.float64)
    torch.testing.assert_close(stats.means(), stats.sums / tokens)
    torch.testing.assert_close(stats.variances(), (stats.sum_squares / tokens - (stats.sums / tokens) ** 2).clamp_min(0))
    assert (stats.variances() > 0).any()
    neurons = tlm.identify(stats, method="ternary", top_rate=0.1)
    assert neurons.source["corpus"]["fingerprint"] == corpus().fingerprint()


def hf_activation_modules(hf, arch):
    """The activation module of every MLP of a plain Hugging Face model: its output is the
    neuron vector (``act_fn(gate)`` for gated MLPs, ``act(x W_in + b)`` for GPT-2)."""
    if arch == "gpt2":
        return [block.mlp.act for block in hf.transformer.h]
    return [layer.mlp.act_fn for layer in hf.model.layers]


def hf_reference_totals(arch, texts_by_lang, *, bos):
    """Float64 sums and sums of squares of the neuron activations of every text token,
    captured by plain forward hooks on a fresh Hugging Face model with the same weights,
    one text at a time (no TransformerLens, no padding, the BOS position not counted)."""
    hf, tok = tiny.hf_model(arch)
    first = [tok.bos_token_id] if bos else []
    modules = hf_activation_modules(hf, arch)
    seen = {}
    handles = [m.register_forward_hook(lambda mod, args, out, l=l: seen.__setitem__(l, out[0].double()))
               for l, m in enumerate(modules)]
    sums = squares = None
    tokens = []
    try:
        for k, texts in enumerate(texts_by_lang):
            n = 0
            for text in texts:
                ids = first + tok(text, add_special_tokens=False)["input_ids"]
                with torch.no_grad():
                    hf(torch.tensor([ids]))
                acts = torch.stack([seen[l][len(first):] for l in range(len(modules))])  # [layer, pos, d_mlp]
                if sums is None:
                    shape = (len(modules), acts.shape[-1], len(texts_by_lang))
                    sums = torch.zeros(shape, dtype=torch.float64)
                    squares = torch.zeros(shape, dtype=torch.float64)
                sums[..., k] += acts.sum(1)
                squares[..., k] += (acts * acts).sum(1)
                n += acts.shape[1]
            tokens.append(n)
    finally:
        for handle in handles:
            handle.remove()
    return sums, squares, tokens


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gemma3"])
def test_sums_are_float64_totals_of_the_neuron_activations(arch):
    """Sums and sums of squares are float64 and equal float64 sums of the activations
    (``act_fn(gate)`` for gated MLPs, not the gate itself) captured outside the library,
    over several batches per language."""
    model = tiny.bridge(arch)
    lm = tlm.adapt(model)
    stats = tlm.collect_stats(lm, corpus(), batch_size=2, progress=False)
    assert stats.sums.dtype == torch.float64 and stats.sum_squares.dtype == torch.float64
    sums, squares, tokens = hf_reference_totals(arch, list(tiny.SAMPLE_TEXT.values()),
                                                bos=model.cfg.default_prepend_bos)
    assert list(stats.token_counts.values()) == tokens
    torch.testing.assert_close(stats.sums, sums, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(stats.sum_squares, squares, rtol=1e-5, atol=1e-4)
    n = torch.tensor(tokens, dtype=torch.float64)
    torch.testing.assert_close(stats.means(), sums / n, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.variances(), (squares / n - (sums / n) ** 2).clamp_min(0), rtol=1e-4, atol=1e-5)


# -- checkpoints inside the collection -----------------------------------------------------


def test_an_interrupted_collection_resumes_from_its_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    from tl_multilingual import persist
    from tl_multilingual.neurons import collect

    model = tiny.bridge("gpt2")
    texts = tlm.data.parallel(["en", "fr"]).head(9)
    whole = tlm.collect_stats(model, texts, batch_size=2, progress=False)  # 5 + 5 batches
    original, ran = collect._Totals.run, []

    def counted(self, *args):
        ran.append(len(ran))
        if len(ran) == 8:  # inside the second language; 6 batches are saved
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(collect._Totals, "run", counted)
    folder = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt):
        tlm.collect_stats(model, texts, batch_size=2, progress=False, checkpoint=folder,
                          checkpoint_every=3)
    assert persist.read_result(folder, kind=collect.CHECKPOINT_KIND)[1]["batches_done"] == 6
    ran.clear()
    resumed = tlm.collect_stats(model, texts, batch_size=2, progress=False, checkpoint=folder,
                                checkpoint_every=3)
    assert len(ran) == 10 - 6 and not folder.exists()
    for name in ("active_counts", "sums", "sum_squares", "tokens"):
        assert torch.equal(getattr(resumed, name), getattr(whole, name)), name


def test_a_checkpoint_of_other_inputs_is_not_used(tmp_path):
    from tl_multilingual import persist

    model = tiny.bridge("gpt2")
    texts = tlm.data.parallel(["en", "fr"]).head(6)
    folder = tmp_path / "checkpoint"
    fake = {"active": torch.full((2, 48, 2), 7), "sums": torch.ones(2, 48, 2, dtype=torch.float64),
            "sum_squares": torch.ones(2, 48, 2, dtype=torch.float64), "tokens": torch.tensor([9, 9])}
    persist.write_result(folder, kind="tl_multilingual.CollectionCheckpoint", tensors=fake,
                             manifest={"inputs": "another corpus", "batches_done": 2})
    with pytest.warns(tlm.TLMultilingualWarning, match="saved for other inputs"):
        got = tlm.collect_stats(model, texts, batch_size=2, progress=False, checkpoint=folder)
    assert torch.equal(got.active_counts, tlm.collect_stats(model, texts, batch_size=2,
                                                            progress=False).active_counts)
    with pytest.raises(tlm.CorpusError, match="checkpoint_every"):
        tlm.collect_stats(model, texts, checkpoint=folder, checkpoint_every=0)


def test_saved_runs_of_an_experiment_are_read_back_not_measured_again(tmp_path, monkeypatch):
    import pandas as pd

    from tl_multilingual.experiments import deactivation, engine

    frame = pd.DataFrame({"language": ["en", "fr"], "unit": [0, 1], "num": [0.1 + 0.2, float("nan")],
                          "den": [3.0, 1e-300], "flag": [True, False]})
    engine.save_frame(frame, tmp_path / "frame.json")
    pd.testing.assert_frame_equal(engine.load_frame(tmp_path / "frame.json"), frame, check_exact=True)

    model = tlm.models.tiny("llama", n_layers=4)
    texts = tlm.data.parallel(["en", "fr"]).head(6)
    neurons = tlm.identify(tlm.collect_stats(model, texts, progress=False), top_rate=0.1)
    options = {"classes": ["specific"], "controls": 1, "n_boot": 20, "progress": False}
    whole = tlm.deactivation_matrix(model, neurons, texts, **options)
    original, measured = deactivation._Evaluation.units, []

    def units(self, lm):
        measured.append(1)
        if len(measured) == 3:
            raise KeyboardInterrupt
        return original(self, lm)

    monkeypatch.setattr(deactivation._Evaluation, "units", units)
    folder = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        tlm.deactivation_matrix(model, neurons, texts, checkpoint=folder, **options)
    saved = len(list(folder.glob("run-*")))
    assert saved == 2
    measured.clear()
    measured.append(-99)  # no further interruption
    resumed = tlm.deactivation_matrix(model, neurons, texts, checkpoint=folder, **options)
    pd.testing.assert_frame_equal(resumed.frame, whole.frame, check_exact=True)
    pd.testing.assert_frame_equal(resumed.controls, whole.controls, check_exact=True)
    assert len(measured) - 1 == len(list(folder.glob("run-*"))) - saved  # only unsaved runs
