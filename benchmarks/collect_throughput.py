"""Collection throughput against the bare Hugging Face forward of the same model body.

Builds a random-weight Llama-style model of ~134M parameters (12 layers, d_model 768,
d_mlp 2048, vocabulary 32k), then times, on identical padded batches:

- ``bare``: ``hf_model.model(input_ids, attention_mask)``, the body without the LM head;
- ``bridge``: the TransformerBridge forward as collection runs it, without reductions;
- ``collect``: ``tlm.collect_stats`` end to end (tokenising, hooks, reductions).

Run: ``python benchmarks/collect_throughput.py [--texts 64] [--batch-size 8] [--repeats 3]``
"""

from __future__ import annotations

import argparse

import torch
from common import build_llama, texts, timed

import tl_multilingual as tlm
from tl_multilingual.model.tokens import batches, encode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=48, help="texts per language")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    hf, bridge = build_llama()
    lm = tlm.adapt(bridge)
    corpus = tlm.Corpus.from_dict(texts(args.texts))
    n_params = sum(p.numel() for p in hf.parameters())
    plan = [b for lang in corpus.languages for _, b in batches(lm, encode(lm, corpus[lang]), args.batch_size)]
    n_tokens = sum(int(b.attention_mask.sum()) for b in plan)

    def bare() -> None:
        with torch.no_grad():
            for b in plan:
                hf.model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)

    def bridge_only() -> None:
        for b in plan:
            lm.forward(b, logits=False)

    def collect() -> None:
        tlm.collect_stats(lm, corpus, batch_size=args.batch_size, progress=False)

    t_bare = timed(bare, args.repeats)
    t_bridge = timed(bridge_only, args.repeats)
    t_collect = timed(collect, args.repeats)
    print(f"model: {n_params / 1e6:.0f}M parameters, {lm.n_layers} layers, d_mlp {lm.d_mlp}")
    print(f"batches: {len(plan)} x {args.batch_size}, {n_tokens} real tokens, torch threads {torch.get_num_threads()}")
    print(f"bare HF body forward : {t_bare:7.3f} s  ({n_tokens / t_bare:8.0f} tokens/s)")
    print(f"bridge, no reductions: {t_bridge:7.3f} s  ({n_tokens / t_bridge:8.0f} tokens/s)")
    print(f"collect_stats        : {t_collect:7.3f} s  ({n_tokens / t_collect:8.0f} tokens/s)")
    print(f"collection throughput / bare forward = {t_bare / t_collect:.3f}x")


if __name__ == "__main__":
    main()
