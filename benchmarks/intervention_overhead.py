"""Overhead of an ablation hook over a bare forward pass.

On the ~134M-parameter random Llama of ``common.py``, times the full forward (with
logits) of identical padded batches: bare, under ``tlm.ablate`` (zero) of 1% of the
neurons of every layer, and under mean ablation (which also reads the up projection
of the gated MLP).

Run: ``python benchmarks/intervention_overhead.py [--texts 16] [--batch-size 8] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import build_llama, texts, timed

import tl_multilingual as tlm
from tl_multilingual.model.tokens import batches, encode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=16, help="texts per language")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    _, bridge = build_llama()
    lm = tlm.adapt(bridge)
    corpus = tlm.Corpus.from_dict(texts(args.texts))
    plan = [b for lang in corpus.languages for _, b in batches(lm, encode(lm, corpus[lang]), args.batch_size)]
    per_layer = [round(0.01 * lm.d_mlp)] * lm.n_layers
    mask = tlm.NeuronMask.random(per_layer, lm.d_mlp, seed=0)
    stats = tlm.collect_stats(lm, corpus, batch_size=args.batch_size, progress=False)

    def forward() -> None:
        for b in plan:
            lm.forward(b)

    def ablated(**kwargs) -> None:
        with tlm.ablate(lm, mask, **kwargs):
            forward()

    # Interleaved, so that drifts in the machine's speed hit every variant alike.
    runs = {"bare": forward, "zero": ablated, "mean": lambda: ablated(value="mean", stats=stats)}
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, 1, warm_up=False))
    t_bare, t_zero, t_mean = (statistics.median(times[n]) for n in ("bare", "zero", "mean"))
    print(f"{lm.n_layers} layers x {lm.d_mlp} neurons, {mask.count()} ablated; {len(plan)} batches; "
          f"torch threads {torch.get_num_threads()}")
    print(f"bare forward       : {t_bare:7.3f} s")
    print(f"zero ablation      : {t_zero:7.3f} s  (overhead {100 * (t_zero / t_bare - 1):+.1f}%)")
    print(f"mean ablation      : {t_mean:7.3f} s  (overhead {100 * (t_mean / t_bare - 1):+.1f}%)")


if __name__ == "__main__":
    main()
