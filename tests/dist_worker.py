"""Run in each of several gloo processes by test_distributed.py: every corpus-level step
under torch.distributed against the same step in one process (inside
``distributed.local()``), on the same tiny model.

Each rank raises AssertionError on a difference, so the spawning test fails with the
traceback; the number of sequences each rank fed to the model is gathered and checked.
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

import tl_multilingual as tlm
from tl_multilingual import distributed
from tl_multilingual.model import readout
from tl_multilingual.model.adapters import ModelAdapter

TEXTS = {
    "en": ["The cat sleeps on the warm mat.", "We walked to the market in the morning.", "Numbers: 12 plus 30 is 42.",
           "The market opens early.", "A warm morning.", "The cat and the mat.", "Twelve walked."],
    "fr": ["Le chat dort sur le tapis chaud.", "Nous avons marché au marché le matin.", "Douze plus trente.",
           "Le marché ouvre tôt.", "Un matin chaud."],
    "zh": ["猫在温暖的垫子上睡觉。", "我们早上走到市场。", "十二加三十等于四十二。", "市场很早开门。"],
}
RECORDS = [
    {"id": f"i{k}", "text": {"en": en, "fr": fr}, "options": {"en": [" mat", " market"], "fr": [" tapis", " marché"]},
     "label": k % 2}
    for k, (en, fr) in enumerate([("The cat sleeps on the", "Le chat dort sur le"), ("We walked to the", "Nous avons marché au"),
                                  ("The cat and the", "Le chat et le"), ("Twelve plus", "Douze plus"),
                                  ("In the morning the", "Le matin le")])
]
WORDS = [{"en": w, "fr": f, "de": d} for w, f, d in
         (("cat", "chat", "Katze"), ("mat", "tapis", "Matte"), ("morning", "matin", "Morgen"), ("market", "marché", "Markt"))]

FED = {"rows": 0}


def _count_rows() -> None:
    """Count the sequences fed to every forward pass of this process."""
    original = ModelAdapter.forward

    def counting(self, batch, **kwargs):
        FED["rows"] += batch.input_ids.shape[0]
        return original(self, batch, **kwargs)

    ModelAdapter.forward = counting


def _fed(fn):
    """Run ``fn``; return its result and the sequences each rank fed to the model."""
    FED["rows"] = 0
    result = fn()
    per_rank = [None] * dist.get_world_size()
    dist.all_gather_object(per_rank, FED["rows"])
    return result, per_rank


def _same_everywhere(value) -> None:
    """The value is identical on every rank."""
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    for other in parts[1:]:
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(other, parts[0])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(other, parts[0]), "ranks returned different tensors"
        else:
            assert other == parts[0]


def _check_split(name: str, per_rank: list[int], single: int) -> None:
    assert sum(per_rank) == single, f"{name}: ranks fed {per_rank}, one process {single}"
    share = single / len(per_rank)
    assert all(abs(n - share) <= 0.25 * single for n in per_rank), f"{name}: unbalanced {per_rank}"


def close_frames(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal frames, numbers to float32 rounding relative to each column's scale
    (differences of perplexities inherit the rounding of the perplexities)."""
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x):
            x, y = x.to_numpy(float), y.to_numpy(float)
            scale = np.nanmax(np.abs(np.concatenate([x, y]))) if np.isfinite(x).any() else 0.0
            assert np.array_equal(np.isnan(x), np.isnan(y)), column
            assert np.allclose(x, y, rtol=0, atol=1e-5 * scale + 1e-7, equal_nan=True), column
        else:
            assert x.tolist() == y.tolist(), column


def run(rank: int, world: int, port: int, results: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                      TQDM_DISABLE="1")
    torch.set_num_threads(1)
    # The timeout only stops a hang: a failing rank makes its peers' collectives fail at once.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=600))
    try:
        _checks(rank)
        if rank == 0:
            with open(results, "w") as handle:
                handle.write("ok")
    finally:
        dist.destroy_process_group()


def _single(fn):
    FED["rows"] = 0
    with distributed.local():
        result = fn()
    return result, FED["rows"]


def _checks(rank: int) -> None:
    _count_rows()
    lm = tlm.adapt(tlm.models.tiny("llama", n_layers=4))
    readout.head(lm)  # its one-time check runs a probe pass: not part of any count below
    corpus = tlm.Corpus.from_dict(TEXTS)
    assert distributed.active() and distributed.world_size() == 2

    # Statistics: counts bit-identical, sums to summation order.
    collect = lambda: tlm.collect_stats(lm, corpus, batch_size=2, progress=False)  # noqa: E731
    (stats, fed), (one, fed_one) = _fed(collect), _single(collect)
    _check_split("collect_stats", fed, fed_one)
    assert torch.equal(stats.tokens, one.tokens) and torch.equal(stats.active_counts, one.active_counts)
    assert torch.allclose(stats.sums, one.sums, rtol=1e-5, atol=1e-5)
    assert torch.allclose(stats.sum_squares, one.sum_squares, rtol=1e-5, atol=1e-5)
    _same_everywhere(stats.active_counts)
    _same_everywhere(stats.sums)

    # A token budget applies to the whole corpus, not to each rank's share.
    budget = lambda: tlm.collect_stats(lm, corpus, batch_size=2, max_tokens_per_language=15, progress=False)  # noqa: E731
    assert torch.equal(budget().tokens, _single(budget)[0].tokens)

    # Perplexity per text, in the original order; the pooled value too.
    ppl = lambda: tlm.perplexity(lm, corpus, per_text=True, batch_size=2)  # noqa: E731
    (frame, fed), (frame_one, fed_one) = _fed(ppl), _single(ppl)
    _check_split("perplexity", fed, fed_one)
    close_frames(frame, frame_one)
    assert frame["tokens"].tolist() == frame_one["tokens"].tolist()
    _same_everywhere(frame)

    # Deactivation matrix: values and bootstrap intervals (same seed) as one process.
    neurons = tlm.identify(one, method="ternary", top_rate=0.2)
    matrix = lambda: tlm.deactivation_matrix(lm, neurons, corpus, classes=["specific", "specific+related"],  # noqa: E731
                                         controls=2, n_boot=200, batch_size=2, progress=False)
    (result, fed), (result_one, fed_one) = _fed(matrix), _single(matrix)
    _check_split("deactivation_matrix", fed, fed_one)
    close_frames(result.frame, result_one.frame)
    close_frames(result.controls, result_one.controls)
    _same_everywhere(result.frame)

    # Choice accuracy and greedy answers.
    items = {"en": [{"prompt": r["text"]["en"], "options": r["options"]["en"], "answer": r["label"]} for r in RECORDS]}
    choice = lambda: tlm.choice_accuracy(lm, items, batch_size=2)  # noqa: E731
    (acc, fed), (acc_one, fed_one) = _fed(choice), _single(choice)
    _check_split("choice_accuracy", fed, fed_one)
    close_frames(acc, acc_one)
    qa = {"en": [(r["text"]["en"], "mat") for r in RECORDS]}
    answers = lambda: tlm.answer_accuracy(lm, qa, lambda out, gold: gold in out, max_new_tokens=3, per_item=True)  # noqa: E731
    pd.testing.assert_frame_equal(answers(), _single(answers)[0])

    # lm-evaluation-harness's requests through the library: continuation log-likelihoods
    # with the greedy check, and whole-text (rolling) log-likelihoods.
    pairs = [(r["text"]["en"], option) for r in RECORDS for option in r["options"]["en"]]
    scores = lambda: tlm.evaluate.continuation_logprobs(lm, pairs, batch_size=2)  # noqa: E731
    (scored, fed), (scored_one, fed_one) = _fed(scores), _single(scores)
    _check_split("continuation_logprobs", fed, fed_one)
    assert [s[1:] for s in scored] == [s[1:] for s in scored_one]
    assert np.allclose([s[0] for s in scored], [s[0] for s in scored_one], rtol=0, atol=1e-4)
    _same_everywhere(scored)
    texts = [t for language in TEXTS.values() for t in language]
    rolling = lambda: tlm.evaluate.rolling_logprobs(lm, texts, batch_size=2)  # noqa: E731
    (whole, fed), (whole_one, fed_one) = _fed(rolling), _single(rolling)
    _check_split("rolling_logprobs", fed, fed_one)
    assert [n for _, n in whole] == [n for _, n in whole_one]
    assert np.allclose([v for v, _ in whole], [v for v, _ in whole_one], rtol=0, atol=1e-4)
    _same_everywhere(whole)

    # Sharing classes (bit codes) on parallel items, and item activations.
    parallel = tlm.ParallelItems.from_records(RECORDS)
    share = lambda: tlm.sharing(lm, parallel, threshold=[0.0, 0.1], batch_size=2, progress=False)  # noqa: E731
    (codes, fed), (codes_one, fed_one) = _fed(share), _single(share)
    _check_split("sharing", fed, fed_one)
    for t in (0.0, 0.1):
        assert torch.equal(codes[t].codes, codes_one[t].codes)
    _same_everywhere(codes[0.0].codes)

    # Attribution, both kinds.
    for method in ("effective", "grad_x_act"):
        attr = lambda m=method: tlm.attribute(lm, parallel, method=m, batch_size=2, progress=False)  # noqa: E731
        got, one_attr = attr(), _single(attr)[0]
        assert torch.allclose(got.scores, one_attr.scores, rtol=1e-5, atol=1e-6), method

    # Boosting a sharing class per item, with random controls.
    boost = lambda: tlm.sharing_experiments.boost_experiment(lm, parallel, sharing=codes_one[0.0], factors=[0.0, 2.0], controls=2,  # noqa: E731
                                         n_boot=100, progress=False)
    (table, fed), (table_one, fed_one) = _fed(boost), _single(boost)
    _check_split("boost_experiment", fed, fed_one)
    close_frames(table, table_one)

    # The logit lens and cross-language patching.
    prompts = tlm.prompts.translation(WORDS, src="fr", tgt="en", shots=1)
    lens = lambda: tlm.language_lens(lm, prompts, batch_size=2)  # noqa: E731
    (read, fed), (read_one, fed_one) = _fed(lens), _single(lens)
    _check_split("language_lens", fed, fed_one)
    assert torch.allclose(read.probability, read_one.probability, rtol=1e-5, atol=1e-7, equal_nan=True)
    assert torch.equal(read.rank, read_one.rank) or torch.allclose(read.rank, read_one.rank, equal_nan=True)
    assert torch.equal(read.top_token, read_one.top_token)
    summary = read.summary(n_boot=100)
    close_frames(summary, read_one.summary(n_boot=100))
    source = tlm.prompts.translation(WORDS, src="de", tgt="en", shots=1)
    mask = neurons.specific("en") | neurons.specific("fr")
    patch = lambda: tlm.patch_neurons(lm, source=source, target=prompts, mask=mask, controls=2, batch_size=2)  # noqa: E731
    (patched, fed), (patched_one, fed_one) = _fed(patch), _single(patch)
    _check_split("patch_neurons", fed, fed_one)
    assert torch.allclose(patched.probability, patched_one.probability, rtol=1e-5, atol=1e-7, equal_nan=True)

    # Per-text values and intervals identical on every rank for the same seed.
    values = np.asarray(frame["nll"], dtype=float)
    _same_everywhere(values.tolist())
    if rank == 0:
        print("all distributed checks passed", flush=True)
