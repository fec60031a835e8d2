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
import statistics
import time

import torch
import transformers as T

import tl_multilingual as tlm
from tl_multilingual.models import SAMPLE_TEXT, tiny_tokenizer
from tl_multilingual.tokens import batches, encode


def build(vocab: int = 32000):
    from transformer_lens.model_bridge import TransformerBridge

    tok = tiny_tokenizer()
    config = T.LlamaConfig(
        vocab_size=vocab, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(0)
    hf = T.AutoModelForCausalLM.from_config(config).eval()
    bridge = TransformerBridge.boot_transformers("bench-llama", hf_model=hf, tokenizer=tok)
    return hf, bridge


def texts(n: int, words: int = 40) -> dict[str, list[str]]:
    """``n`` texts per language of ``words`` words drawn from the sample sentences."""
    out = {}
    for lang in ("en", "fr"):
        pool = " ".join(SAMPLE_TEXT[lang]).split()
        out[lang] = [" ".join(pool[(i + j) % len(pool)] for j in range(words)) for i in range(n)]
    return out


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=48, help="texts per language")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    hf, bridge = build()
    lm = tlm.adapt(bridge)
    corpus = tlm.Corpus.from_dict(texts(args.texts))
    n_params = sum(p.numel() for p in hf.parameters())
    plan = [b for lang in corpus.languages for b, _ in batches(lm, encode(lm, corpus[lang]), args.batch_size)]
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
